"""Input-pipeline throughput: images/s of `pipeline.train_batches` (decode, augment, targets,
batch) on the real LSPET files with the paper's training config (368x368 crops).

    python benchmarks/input_pipeline.py [--lspet DIR] [--batch 16] [--seconds 30] [--warmup 3] [--json]

Prints one line: images/s, batch, input size, CPU cores (os.cpu_count()) and batches timed; with
--json a JSON object with the same figures instead (the line then goes to stderr). Progress goes
to stderr every few seconds. The pipeline's threads use every core the machine reports, so the
figure depends on what else runs there.
"""
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from absl import flags  # noqa: E402

from cpm_jax import cli, errors, runtime  # noqa: E402

DEFAULT_LSPET = ROOT.parent / "shared" / "datasets" / "lspet"
PROGRESS_EVERY_S = 5.0


def measure(lspet: str, batch: int = 16, seconds: float = 30.0, warmup: int = 3,
            log=lambda message: print(message, file=sys.stderr, flush=True)) -> dict:
    """Times `train_batches` of the paper's LSPET config for `seconds` after `warmup` batches."""
    from cpm_jax import configs  # the pipeline (TensorFlow) imported here, so --help is quick
    from data_pipelines import pipeline, registry
    config = configs.paper_config("lspet")
    config.data.paths.lspet = str(lspet)
    config.training.global_batch_size = batch
    configs.validate(config, registry.DATASETS)
    if seconds <= 0 or warmup < 0:
        raise errors.InputError(f"--seconds = {seconds} must be > 0 and --warmup = {warmup} >= 0")
    size = config.model.input_size
    batches = pipeline.train_batches(config, num_devices=1)
    try:
        start = time.perf_counter()
        for _ in range(warmup):
            next(batches)
        log(f"warm-up: {warmup} batches in {time.perf_counter() - start:.1f} s")
        timed, start = 0, time.perf_counter()
        mark, mark_count = start, 0
        while (now := time.perf_counter()) - start < seconds:
            b = next(batches)
            assert b["image"].shape == (1, batch, size, size, 3), b["image"].shape
            timed += 1
            now = time.perf_counter()
            if now - mark >= PROGRESS_EVERY_S:
                log(f"{now - start:5.1f} s  {timed} batches  "
                    f"{(timed - mark_count) * batch / (now - mark):.1f} img/s (last {now - mark:.1f} s)")
                mark, mark_count = now, timed
        elapsed = time.perf_counter() - start
    finally:
        batches.close()
    return {
        "images_per_s": round(timed * batch / elapsed, 2),
        "batch": batch,
        "input_size": size,
        "cpu_cores": os.cpu_count(),
        "batches": timed,
        "seconds": round(elapsed, 2),
        "dataset": "lspet",
    }


def line(result: dict) -> str:
    r = result
    return (f"input pipeline: {r['images_per_s']:.1f} images/s  batch {r['batch']}  "
            f"input {r['input_size']}x{r['input_size']}  {r['cpu_cores']} cores  "
            f"{r['batches']} batches in {r['seconds']:.1f} s")


FLAGS = flags.FLAGS


def main(argv) -> None:
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not os.path.isfile(os.path.join(FLAGS.lspet, "joints.mat")):
        raise errors.InputError(f"--lspet = {FLAGS.lspet}: no joints.mat there "
                                "(the LSPET directory, official layout)")
    if FLAGS.batch < 1:
        raise errors.InputError(f"--batch = {FLAGS.batch}: must be >= 1")
    result = measure(FLAGS.lspet, FLAGS.batch, FLAGS.seconds, FLAGS.warmup)
    if FLAGS.json:
        print(line(result), file=sys.stderr)
        print(json.dumps(result))
    else:
        print(line(result))


if __name__ == "__main__":
    flags.DEFINE_string("lspet", str(DEFAULT_LSPET), "LSPET directory (joints.mat, images/).")
    flags.DEFINE_integer("batch", 16, "Global batch size.")
    flags.DEFINE_float("seconds", 30.0, "How long to time, after the warm-up.")
    flags.DEFINE_integer("warmup", 3, "Batches read before timing starts.")
    flags.DEFINE_bool("json", False, "Print a JSON object instead of the line.")
    cli.run(main)
