"""The prepared accelerator check: what a GPU or TPU host gives this project, in one command.

    python -m cpm_jax.benchmarks.accelerator --out accelerator.json

Run from the checkout's root on the host; it is meant to take under 8 minutes: no measurement
starts after `--time_limit_s` (420 s), nor a try of the search that would, by its estimate, end
after it; the training run is stopped after `--train_timeout_s`. It writes one JSON object to `--out`
(rewritten after each part, so that an interrupted run leaves what it had), with the device's
description and:
  * train_run: a 200-step `python -m cpm_jax.train` run of experiments/synthetic.py on a fresh
    workdir, run first (before this process takes the device's memory): first and last logged
    loss, whether it fell, wall time, the held-out result (`train_run.py`);
  * steps: the paper model (experiments/lsp_paper.py, 368x368) per dtype (bfloat16, float32),
    at batch 16 and at the largest batch that fits (doubling, then bisecting; bfloat16 first, the
    search of float32 only as time allows): images/s, TFLOP/s (layer list x 2 x 3) and the
    fraction of the chip's bf16 peak (`batch_search.py`);
  * pipeline: the input pipeline's images/s on 1, 2, 4, 8 and all cores against the images/s
    the step at batch 16 consumes in the dtype `train` picks (`pipeline_scaling.py`).
The pipeline reads synthetic figures at the model's input size (no dataset on the host); a
`--pipeline_config` with a dataset's paths measures its decoding too. Every size, count and
time limit is a flag, so that tests/test_accelerator_check.py runs the whole check on a CPU with
the tests' tiny model in about a minute. Units: images/s, TFLOP/s, seconds, GB (2^30 bytes).
"""
import json
import os
import sys
import time
from typing import Callable

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from cpm_jax import cli, configs, errors, runtime
from cpm_jax.benchmarks import batch_search, hardware, pipeline_scaling, train_run
from cpm_jax.training import state as train_states
from data_pipelines import registry

PARTS = ("train_run", "steps", "search", "pipeline")
FLAGS = flags.FLAGS


def describe_device() -> dict:
    """The backend, the devices and what is known of their peak and memory."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    bf16_peak, bf16_note = hardware.device_peak(device, "bfloat16")
    return {"backend": jax.default_backend(), "platform": device.platform, "device_kind": device.device_kind,
            "devices": jax.local_device_count(), "device_kinds": sorted({d.device_kind for d in jax.local_devices()}),
            "memory_limit_gb": stats["bytes_limit"] / 2 ** 30 if stats and "bytes_limit" in stats else None,
            "bf16_peak_tflops": bf16_peak / 1e3 or None, "bf16_peak_reckoned": bf16_note,
            "float32_peak_tflops": hardware.device_peak(device, "float32")[0] / 1e3 or None,
            "cpu_cores": len(os.sched_getaffinity(0)), "jax": jax.__version__,
            "allocator": {k: os.environ[k] for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                                     "XLA_PYTHON_CLIENT_ALLOCATOR") if k in os.environ}}


def with_dtype(config: ml_collections.ConfigDict, dtype: str) -> ml_collections.ConfigDict:
    """A copy of `config` computing in `dtype`."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.dtype = dtype
    return config


class Budget:
    """The check's time limit: seconds left, and whether a try of an estimated length fits."""

    def __init__(self, limit_s: float):
        self.start, self.limit_s = time.perf_counter(), limit_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.limit_s - self.elapsed()

    def allows(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()


def search_estimate(last: dict, batch: int, steps: int) -> float:
    """Seconds a try at `batch` should take, from the last try `last` (`batch_search.step_at`'s
    dict): its time outside the steps (compilation) again, its steps scaled by the batch, x1.25."""
    if not last.get("fits"):
        return 1.25 * last["wall_s"]
    stepping = (steps + 1) * last["median_s"]
    return 1.25 * (max(0.0, last["wall_s"] - stepping) + stepping * batch / last["batch"])


def search(config: ml_collections.ConfigDict, state, tries: dict[int, dict], batch: int, max_batch: int,
           multiple: int, resolution: float, steps: int, budget: Budget, on_progress: Callable[[str], None],
           before_try: Callable[[dict], None]) -> dict:
    """`batch_search.largest_batch` of `config`'s step from `batch` (`tries`: measurements made
    already, by batch), each try started only where `budget` allows its estimate and announced
    first by `before_try({"trying": batch, "tries": [...]})` (a try that kills the process leaves
    its batch in the file); doublings that the memory plan at `batch` predicts to fit in the
    device's free memory are skipped. Adds the measurement at the largest batch (`step`) and
    every try's."""
    tries = dict(tries)

    def fits(b: int) -> bool:
        on_progress(f"{config.model.dtype}: trying batch {b}")
        before_try({"trying": b, "tries": list(tries.values())})
        tries[b] = batch_search.step_at(config, state, b, steps)
        return tries[b]["fits"]

    def may_try(b: int) -> bool:
        last = tries[list(tries)[-1]] if tries else None  # the latest try
        return budget.allows(search_estimate(last, b, steps) if last else 0.0)

    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    available_gb = (stats["bytes_limit"] - stats.get("bytes_in_use", 0)) / 2 ** 30 if stats and "bytes_limit" in stats else None
    guess = batch_search.predicted_largest(tries.get(batch), available_gb)
    result = batch_search.largest_batch(fits, batch, max_batch, multiple, resolution, may_try,
                                        known={b: t["fits"] for b, t in tries.items()}, guess=guess)
    result["step"] = tries.get(result["largest"])
    result["tries"] = [tries[b] for b, _ in result["tried"]]
    return result


def check(config: ml_collections.ConfigDict, pipeline_config: ml_collections.ConfigDict, *, dtypes: list[str],
          batch: int, max_batch: int, resolution: float, steps: int, pipeline_batch: int, pipeline_batches: int,
          cores: list[str], train_config: str, train_steps: int, train_args: list[str], train_timeout_s: float,
          time_limit_s: float, parts: tuple[str, ...] = PARTS, on_progress: Callable[[str], None] = lambda line: None,
          write: Callable[[dict], None] = lambda out: None) -> dict:
    """Every figure of the module docstring, as one dict; `write(out)` after each part (and, with
    the try under way, before each try of the search). `elapsed_s`: seconds since the start at
    the end of each part."""
    budget = Budget(time_limit_s)
    out = {"check": "cpm_jax accelerator check", "time_limit_s": time_limit_s, "parts": list(parts), "elapsed_s": {}}
    if "train_run" in parts:  # first: a process holding the device's memory would starve it
        on_progress(f"training {train_steps} steps of {train_config} in a subprocess")
        out["train_run"] = train_run.run(train_config, train_steps, train_args,
                                         timeout_s=max(1.0, min(train_timeout_s, budget.left())))
        out["elapsed_s"]["train_run"] = budget.elapsed()
        write(out)
    out["device"] = describe_device()
    multiple = jax.local_device_count()
    if batch % multiple:
        raise errors.ConfigError(f"--batch {batch} does not split over {multiple} devices")
    m = config.model
    out["model"] = {"input_size": m.input_size, "num_stages": m.num_stages, "num_parts": m.num_parts,
                    "train_tflops_per_image": batch_search.train_tflops_per_image(m),
                    "train_dtype": configs.resolve_dtype(with_dtype(config, m.dtype), jax.default_backend()).model.dtype}
    out["steps"] = {}
    states = {}
    for dtype in dtypes:
        if not {"steps", "search"} & set(parts):
            break
        on_progress(f"{dtype}: initialising the model")
        config_ = with_dtype(config, dtype)
        states[dtype] = (config_, train_states.create(config_, jax.random.key(config.seed)))
        out["model"]["params"] = int(sum(x.size for x in jax.tree.leaves(states[dtype][1].params)))
        if "steps" in parts and budget.left() > 0:
            on_progress(f"{dtype}: the training step at batch {batch}")
            out["steps"][dtype] = {"at_batch": batch_search.step_at(*states[dtype], batch, steps)}
    out["elapsed_s"]["steps"] = budget.elapsed()
    write(out)
    if "pipeline" in parts:
        at = out["steps"].get(out["model"]["train_dtype"], {}).get("at_batch") or {}
        consumed = at.get("images_per_s")
        p_config = ml_collections.ConfigDict(pipeline_config.to_dict())
        p_config.model.input_size = m.input_size
        counts = pipeline_scaling.core_counts(cores, len(os.sched_getaffinity(0)))
        on_progress(f"the input pipeline on {', '.join(map(str, counts))} core(s)")
        out["pipeline"] = {"dataset": p_config.data.dataset, "input_size": m.input_size,
                           **pipeline_scaling.by_cores(p_config, pipeline_batch or batch, pipeline_batches, counts,
                                                       consumed, may_run=lambda: budget.left() > 0)}
        out["elapsed_s"]["pipeline"] = budget.elapsed()
        write(out)
    if "search" in parts:
        for dtype, (config_, state) in states.items():
            on_progress(f"{dtype}: the largest batch that fits (up to {max_batch})")
            known = out["steps"].get(dtype, {}).get("at_batch")
            out["steps"].setdefault(dtype, {})["largest_batch"] = search(
                config_, state, {batch: known} if known else {}, batch, max_batch, multiple, resolution, steps,
                budget, on_progress, lambda progress, dtype=dtype: write({**out, "search_in_progress": {dtype: progress}}))
            write(out)
        out["elapsed_s"]["search"] = budget.elapsed()
    out["elapsed_s"]["total"] = budget.elapsed()
    out["within_time_limit"] = out["elapsed_s"]["total"] <= time_limit_s
    out["peak_host_memory_gb"] = hardware.peak_host_memory_gb()
    return out


def summary_lines(out: dict) -> list[str]:
    """A few lines for people: the device, each dtype's rates, the pipeline, the training run."""
    d = out["device"]
    lines = [f"accelerator check: {d['device_kind']} x{d['devices']} ({d['backend']}), {d['cpu_cores']} CPU cores"]
    for dtype, s in out.get("steps", {}).items():
        for key in ("at_batch", "largest_batch"):
            step = s.get(key, {}).get("step") if key == "largest_batch" else s.get(key)
            if step and step.get("fits"):
                fraction = step["bf16_peak_fraction"]
                lines.append(f"{dtype} batch {step['batch']}: {step['images_per_s']:.1f} images/s, "
                             f"{step['tflops_per_s']:.2f} TFLOP/s"
                             + (f" ({100 * fraction:.1f}% of the bf16 peak)" if fraction else ""))
            elif step:
                lines.append(f"{dtype} batch {step['batch']}: does not fit ({step.get('error', '')})")
    for row in out.get("pipeline", {}).get("by_cores", []):
        lines.append(f"input pipeline on {row['cores']} core(s): {row['images_per_s']:.1f} images/s"
                     + (" (keeps up with the step)" if row["keeps_up"] else ""))
    run = out.get("train_run")
    if run:
        lines.append(f"train run ({run['steps']} steps): exit {run['returncode']}, loss {run['first_loss']} -> "
                     f"{run['last_loss']} (fell: {run['loss_fell']}), {run['wall_s']:.0f} s")
    lines.append(f"{out['elapsed_s']['total']:.0f} s in all (limit {out['time_limit_s']:g} s)")
    return lines


def main(argv) -> None:
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    parts = tuple(p for p in FLAGS.parts if p)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise errors.ConfigError(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    bad = sorted(set(FLAGS.dtypes) - set(configs.DTYPES))
    if bad or not FLAGS.dtypes:
        raise errors.ConfigError(f"--dtypes: {', '.join(bad) or 'none given'}; known: {', '.join(configs.DTYPES)}")
    configs.validate(FLAGS.config)
    if "pipeline" in parts:
        configs.validate(FLAGS.pipeline_config, registry.DATASETS, splits=("train",))
    if not os.path.isfile(FLAGS.train_config):
        raise errors.InputError(f"--train_config {FLAGS.train_config}: no such file")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)

    def write(out: dict) -> None:
        with open(FLAGS.out + ".tmp", "w") as f:
            json.dump({**out, "command": " ".join(["python -m cpm_jax.benchmarks.accelerator"] + sys.argv[1:])},
                      f, indent=1)
        os.replace(FLAGS.out + ".tmp", FLAGS.out)

    out = check(FLAGS.config, FLAGS.pipeline_config, dtypes=FLAGS.dtypes, batch=FLAGS.batch,
                max_batch=FLAGS.max_batch, resolution=FLAGS.resolution, steps=FLAGS.steps,
                pipeline_batch=FLAGS.pipeline_batch, pipeline_batches=FLAGS.pipeline_batches, cores=FLAGS.cores,
                train_config=FLAGS.train_config, train_steps=FLAGS.train_steps, train_args=FLAGS.train_arg,
                train_timeout_s=FLAGS.train_timeout_s, time_limit_s=FLAGS.time_limit_s, parts=parts,
                on_progress=lambda line: print(f"accelerator: {line}", flush=True), write=write)
    write(out)
    print("\n".join(summary_lines(out)))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", "experiments/lsp_paper.py", "The model measured (experiments/*.py).")
    config_flags.DEFINE_config_file("pipeline_config", "experiments/synthetic.py",
                                    "The input pipeline measured (its data; the model's input size).")
    flags.DEFINE_string("out", None, "The JSON file written.")
    flags.mark_flags_as_required(["out"])
    flags.DEFINE_list("parts", list(PARTS), f"What to run, of: {', '.join(PARTS)}.")
    flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Compute dtypes measured (model.dtype), searched in this order.")
    flags.DEFINE_integer("batch", 16, "Images per step of the first measurement and the pipeline.", lower_bound=1)
    flags.DEFINE_integer("max_batch", 1024, "The largest batch the search tries.", lower_bound=1)
    flags.DEFINE_float("resolution", 0.25, "The search stops within this fraction of the largest batch.")
    flags.DEFINE_integer("steps", 10, "Timed steps of each measurement, after the first.", lower_bound=1)
    flags.DEFINE_integer("pipeline_batch", 0, "Images per pipeline batch (0: --batch).", lower_bound=0)
    flags.DEFINE_integer("pipeline_batches", 10, "Batches timed per core count.", lower_bound=1)
    flags.DEFINE_list("cores", ["1", "2", "4", "8", "all"], "Core counts of the pipeline (all: every core).")
    flags.DEFINE_string("train_config", "experiments/synthetic.py", "The config file of the training run.")
    flags.DEFINE_integer("train_steps", 200, "Steps of the training run.", lower_bound=1)
    flags.DEFINE_multi_string("train_arg", ["--config.training.log_every=1"],
                              "An argument of the training run (repeat the flag for more).")
    flags.DEFINE_float("train_timeout_s", 180, "The training run is stopped after this many seconds.")
    flags.DEFINE_float("time_limit_s", 420, "Seconds after which no new measurement starts (the search: none that "
                      "would end after them).")
    cli.run(main)
