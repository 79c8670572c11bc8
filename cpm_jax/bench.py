"""How fast a config's CPM trains and predicts on this machine, and against PyTorch.

    python -m cpm_jax.bench --config experiments/synthetic.py [--batch 8] [--json] [--compare torch]

One run measures, on whatever backend JAX finds:
  * train: the training step `train.py` runs (`train.parallel_train_step`: forward, backward,
    update) on a fixed random batch: compile time, the first step after compilation, then the
    median and spread of `--steps` steps, as images/s;
  * inference: the model's forward pass (eval mode, one scale), images/s;
  * pipeline: the tf.data training pipeline alone (crop, rotate, scale, targets), images/s, and
    "fed": training steps fed by that pipeline as `train` runs them, which says whether the input
    or the step bounds training;
  * FLOPs: forward FLOPs per image from the layer list (`architecture.forward_multiply_adds`,
    1 MAC = 2 FLOPs) and from XLA's cost analysis (which leaves out the zero padding, and
    oneDNN's convolutions: custom calls, `onednn.py`), side by side; achieved FLOP/s of the step
    (layer list: a training step is 3x the forward pass; a direct convolution's count, so where
    `convolution.py` takes the DFT form it can pass the peak)
    against the device's peak (CPU: cores x nominal GHz x FLOP/cycle from /proc/cpuinfo; an
    accelerator: the vendor's figure; `--peak_gflops` overrides) and against the rate a large
    matrix product reaches here (clocks may boost above the nominal);
  * memory bandwidth: GB/s an elementwise pass moves over an array larger than the caches and
    over one that fits in them, the ceiling of the step's memory-bound parts (ReLU, pooling,
    pads, layout changes), which a 2-core cloud VM can hold to a few GB/s from main memory;
  * memory: peak host memory of the process after the JAX parts (ru_maxrss) and, on an
    accelerator, JAX's peak device memory.
  * layers (only when asked: `--parts train,layers`): each distinct convolution of the model
    (`architecture.model_convolutions`) timed alone, forward and training (forward and
    gradients), with how many times the model runs it and the form JAX runs it in on a CPU
    (`convolution.cpu_form`), summed over the model and set against the whole training step:
    where the step's time goes, layer by layer against PyTorch.
The header's "convolutions:" line counts a forward pass's convolutions by that form (on a CPU;
JSON `convolution_forms`) and says whether oneDNN's kernels loaded (JSON `convolutions`).
`--compare torch` builds the same network in PyTorch (`torch_peer.py`: same layers, Caffe ceil-mode
pooling, parameter count checked, the JAX parameters copied in), times the same batch in the same
process, alternating rounds of JAX and PyTorch steps, and prints JAX / PyTorch ratios.

The table is for people; `--json` adds one JSON object as the last line (keys in `summarise`).
"""
import contextlib
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import linen as nn
from ml_collections import config_flags

from cpm_jax import architecture, cli, configs, convolution, errors, model as cpm_model, onednn, runtime, state as train_states, train
from data_pipelines import registry

PARTS = ("train", "inference", "pipeline", "fed", "layers")
DEFAULT_PARTS = PARTS[:4]
# One timed sample of a single convolution repeats it for about this long: a millisecond call
# timed alone after `alternate`'s pause meets cores still waking (up to 2x slower).
LAYER_SAMPLE_S = 0.05
MEMORY_MIB = (256, 2048)  # arrays well past a CPU's / an accelerator's caches
CACHE_MIB = 4
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation
TORCH_MISSING = "PyTorch is not installed (pip install -e '.[bench]' adds the CPU build, torch 2.13)"
# Dense peak TFLOP/s (bfloat16, float32) by a substring of `device.device_kind`; vendor sheets.
ACCELERATOR_PEAKS = {
    "H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3),
    "TPU v4": (275.0, None), "TPU v5 lite": (197.0, None), "TPU v5e": (197.0, None),
    "TPU v5p": (459.0, None), "TPU v6": (918.0, None),
}


# ---------------------------------------------------------------------------------------------
# Timing


STEPS_PER_ROUND, MAX_ROUNDS = 5, 8  # `measure`'s alternation of JAX and PyTorch
# `alternate`'s pause between runs of one runner's calls, for the worker threads' spinning to end.
# The first call after it, which a loop of steps never meets, is not timed: on a 2-core AMD EPYC
# Zen 4 (demo config, ms by position in runs of 8 calls, medians of 5 runs) JAX's training step
# read 69 45 40 41 43 44 41 42 (2,138 page faults in the first call: PyTorch's run before it had
# freed and reused the memory), PyTorch's 58 53 51 51 50 55 53 54.
PAUSE_S = 0.5


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes, its results waited for."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def alternate(runners: dict[str, Callable[[], object]], steps: int, rounds: int,
              pause: float = PAUSE_S) -> dict[str, list[float]]:
    """Per-call seconds of each runner: `rounds` rounds, each `steps // rounds` calls of every
    runner in turn (so that drift of the machine's speed hits all of them alike), `pause` seconds
    apart (XLA's and PyTorch's worker threads spin for a while after their last task, and would
    otherwise take cores from the next runner), each run of calls after one untimed call: the
    steady state of a loop of steps (PAUSE_S says why)."""
    times = {name: [] for name in runners}
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name, run in runners.items():
            time.sleep(pause)
            timed(run)
            times[name] += [timed(run) for _ in range(per_round)]
    return times


def spread(seconds: list[float], images: int) -> dict:
    """images/s at the median step, and at the slowest and fastest."""
    return {"median_s": statistics.median(seconds), "images_per_s": images / statistics.median(seconds),
            "min_images_per_s": images / max(seconds), "max_images_per_s": images / min(seconds)}


def peak_host_memory_gb() -> float:
    """The process's peak resident memory so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# ---------------------------------------------------------------------------------------------
# What the machine can do


def cpu_peak(cpuinfo: str, cores: int) -> tuple[float, str]:
    """(FP32 GFLOP/s, how it was reckoned) from /proc/cpuinfo's text: cores x GHz x FLOPs per
    cycle of the widest FMA the flags show (two FMA pipes per core). AMD Zen 4 (family 25 with
    AVX-512) executes 512-bit FMAs as two 256-bit halves, so it counts as AVX2."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags_ = set(fields.get("flags", "").split())
    ghz = float(fields.get("cpu MHz", "0") or 0) / 1000
    amd_zen4 = fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
    if "avx512f" in flags_ and not amd_zen4:
        per_cycle, isa = 64, "AVX-512 FMA x2"
    elif "fma" in flags_ and "avx2" in flags_:
        per_cycle, isa = 32, "AVX2 FMA x2" + (" (Zen 4 AVX-512 is 2x256-bit)" if amd_zen4 else "")
    elif "avx" in flags_:
        per_cycle, isa = 16, "AVX"
    else:
        per_cycle, isa = 8, "SSE"
    if not ghz:
        return 0.0, "unknown (no 'cpu MHz' in /proc/cpuinfo; pass --peak_gflops)"
    peak = cores * ghz * per_cycle
    return peak, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({isa}) = {peak:.0f} GFLOP/s"


def device_peak(device, dtype: str) -> tuple[float, str]:
    """(peak GFLOP/s of `dtype`, how it was reckoned) for a JAX device; 0 where unknown."""
    if device.platform == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            return 0.0, "unknown (no /proc/cpuinfo; pass --peak_gflops)"
        return cpu_peak(text, len(os.sched_getaffinity(0)))
    for name, (bf16, fp32) in ACCELERATOR_PEAKS.items():
        if name.lower() in device.device_kind.lower():
            peak = bf16 if dtype == "bfloat16" else fp32
            if peak:
                return peak * 1e3, f"{device.device_kind} dense {dtype} peak, vendor figure: {peak:g} TFLOP/s"
    return 0.0, f"unknown for {device.device_kind} {dtype} (pass --peak_gflops)"


def matmul_gflops(dtype: str, size: int) -> float:
    """GFLOP/s of a (size x size) @ (size x size) product in `dtype` on JAX's default device: what
    dense arithmetic reaches here in practice (CPU clocks often boost above the nominal one)."""
    a = jnp.ones((size, size), dtype)
    product = jax.jit(jnp.dot).lower(a, a).compile()
    seconds = statistics.median([timed(lambda: product(a, a)) for _ in range(7)])
    return 2 * size ** 3 / seconds / 1e9


def elementwise_gb_per_s(mib: int) -> float:
    """GB/s (read plus write) of `x * 2` over a float32 array of `mib` MiB on JAX's default
    device: main memory's bandwidth for an array larger than the caches, the caches' for one that
    fits in them."""
    x = jnp.ones((mib * 2 ** 18,), jnp.float32)
    double = jax.jit(lambda x: x * 2).lower(x).compile()
    calls = calls_lasting(LAYER_SAMPLE_S, lambda: double(x))
    seconds = statistics.median([timed(lambda: repeat(lambda: double(x), calls)) for _ in range(5)]) / calls
    return 2 * x.nbytes / seconds / 1e9


# ---------------------------------------------------------------------------------------------
# The JAX parts


def random_batch(config: ml_collections.ConfigDict, batch: int, seed: int = 0) -> dict:
    """A training batch of the config's shapes with random values: image (B, H, W, 3) normalised,
    center_map (B, H/8, W/8, 1), targets (B, H/8, W/8, P+1)."""
    m = config.model
    rng = np.random.default_rng(seed)
    cells = architecture.pooled_size(m.input_size, architecture.image_trunk(m))
    return {
        "image": architecture.normalise_image(rng.uniform(0, 255, (batch, m.input_size, m.input_size, 3))).astype(np.float32),
        "center_map": rng.uniform(0, 1, (batch, cells, cells, 1)).astype(np.float32),
        "targets": rng.uniform(0, 1, (batch, cells, cells, m.num_parts + 1)).astype(np.float32),
    }


def per_device(batch: dict, num_devices: int) -> dict:
    """(B, ...) -> (devices, B / devices, ...), as `pipeline.train_batches` gives."""
    return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


@contextlib.contextmanager
def compilations():
    """Yields a list that gets the seconds of every XLA compilation (JAX's monitoring events)
    made while inside."""
    seconds = []

    def listener(name: str, duration: float, **_) -> None:
        if name == COMPILE_EVENT:
            seconds.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seconds
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def xla_flops(computation) -> float | None:
    """FLOPs XLA's cost analysis counts for a lowered or compiled computation (None where it
    gives none; a lowered one's count, before XLA's optimisations, is within 1% of it)."""
    analysis = computation.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class JaxTraining:
    """The training step of `train.py` on one fixed batch, called as `train` calls it (the jitted
    step, the state placed by `train.replicate`, each step fed the last one's donated state), so
    that a recompilation `train` would meet shows here; `step()` runs one."""

    def __init__(self, config: ml_collections.ConfigDict, state, batch: dict):
        devices = jax.local_device_count()
        self._step = train.parallel_train_step(config)
        self._p_state = train.replicate(state)
        self._batch = jax.pmap(lambda x: x)(per_device(batch, devices))  # resident on the devices
        self._rng = train.replicate(jax.random.key(1))
        self.flops = xla_flops(self._step.lower(self._p_state, self._batch, self._rng))  # no compilation
        with compilations() as seconds:  # the step's own compilation, on its first call
            timed(self.step)
        self.compile_s = sum(seconds)

    def step(self):
        self._p_state, metrics = self._step(self._p_state, self._batch, self._rng)
        return metrics["loss"]

    def fed_step(self, batch: dict):
        """One step on a pipeline batch ((devices, B/devices, ...) numpy arrays, as train gets;
        the keys the step does not read (joints, visibility) left out)."""
        batch = {k: batch[k] for k in self._batch}
        self._p_state, metrics = self._step(self._p_state, batch, self._rng)
        return metrics["loss"]


class JaxInference:
    """The model's forward pass (eval mode) on one fixed batch; `run()` returns the beliefs."""

    def __init__(self, config: ml_collections.ConfigDict, params, batch: dict):
        model = cpm_model.CPM(config.model)
        forward = jax.jit(lambda p, image, center: model.apply({"params": p}, image, center, train=False))
        self._args = (params, jnp.asarray(batch["image"]), jnp.asarray(batch["center_map"]))
        start = time.perf_counter()
        self._compiled = forward.lower(*self._args).compile()
        self.compile_s = time.perf_counter() - start
        self.flops = xla_flops(self._compiled)

    def run(self):
        return self._compiled(*self._args)


def pipeline_rate(config: ml_collections.ConfigDict, batch: int, batches: int) -> float:
    """Images/s of the training pipeline alone (after its first 2 batches, which fill buffers)."""
    from data_pipelines import pipeline
    config = _with_batch(config, batch)
    with pipeline.train_batches(config, 1) as stream:
        for _ in range(2):
            next(stream)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        return batches * batch / (time.perf_counter() - start)


def fed_rate(config: ml_collections.ConfigDict, training: JaxTraining, batch: int, steps: int) -> float:
    """Images/s of training steps fed by the pipeline, as `train` runs them (after 2 steps)."""
    from data_pipelines import pipeline
    config = _with_batch(config, batch)
    with pipeline.train_batches(config, jax.local_device_count()) as stream:
        for _ in range(2):
            jax.block_until_ready(training.fed_step(next(stream)))
        start = time.perf_counter()
        for _ in range(steps):
            loss = training.fed_step(next(stream))
        jax.block_until_ready(loss)
        return steps * batch / (time.perf_counter() - start)


def _with_batch(config: ml_collections.ConfigDict, batch: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.training.global_batch_size = batch
    return config


def jax_layer(conv: architecture.ConvAt, batch: int, dtype: str, seed: int = 0) -> tuple[Callable, Callable]:
    """(forward, train) of one convolution with bias as the model runs it (`nn.Conv` with
    `convolution.conv_general_dilated`, "SAME"), compiled, on a random (B, size, size, in_channels)
    input: forward() not differentiated; train() the forward pass and the gradients of the kernel,
    the bias and, unless `conv.on_image`, the input, for a fixed output cotangent."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, conv.size, conv.size, conv.in_channels), np.float32), dtype)
    kernel = jnp.asarray(rng.standard_normal((conv.kernel, conv.kernel, conv.in_channels, conv.features), np.float32))
    bias = jnp.zeros((conv.features,), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((batch, conv.size, conv.size, conv.features), np.float32), dtype)
    layer = nn.Conv(conv.features, (conv.kernel, conv.kernel), padding="SAME", dtype=dtype,
                    conv_general_dilated=convolution.conv_general_dilated)
    variables = {"params": {"kernel": kernel, "bias": bias}}

    def apply(variables, x):
        return layer.apply(variables, x)

    def gradients(variables, x):  # the output too: a convolution's gradients do not need it
        out, vjp = jax.vjp(apply, variables, x)
        grads = vjp(cotangent)
        return out, (grads[0] if conv.on_image else grads)

    forward = jax.jit(apply).lower(variables, x).compile()
    train_ = jax.jit(gradients).lower(variables, x).compile()
    return (lambda: forward(variables, x)), (lambda: train_(variables, x))


FORM_NAMES = {"dft": "as DFT matrix products (convolution.dft_conv)", "onednn": "on oneDNN",
              "narrow": "in the narrow-layer forms", "xla": "on XLA's convolution"}


def layer_form(conv: architecture.ConvAt, batch: int, dtype: str) -> str:
    """`convolution.cpu_form` of one of the model's ("SAME") convolutions at this batch size."""
    shape = (batch, conv.size, conv.size, conv.in_channels)
    kernel = (conv.kernel, conv.kernel, conv.in_channels, conv.features)
    pads = jax.lax.padtype_to_pads(shape[1:3], kernel[:2], (1, 1), "SAME")
    return convolution.cpu_form(shape, kernel, pads, jnp.dtype(dtype))


def convolution_forms(m: ml_collections.ConfigDict, batch: int) -> dict:
    """How many of a forward pass's convolutions each `convolution.cpu_form` takes on a CPU."""
    forms = {}
    for conv, count in architecture.model_convolutions(m).items():
        form = layer_form(conv, batch, m.dtype)
        forms[form] = forms.get(form, 0) + count
    return forms


def layer_times(config: ml_collections.ConfigDict, batch: int, steps: int, compare: str,
                pause: float = PAUSE_S) -> list[dict]:
    """Median milliseconds of each distinct convolution of the model (`architecture.model_convolutions`),
    forward and training (forward + gradients), in JAX and, with compare="torch", PyTorch,
    alternating frameworks (`alternate`, `pause` seconds between runners); one dict per
    convolution, with how many times the forward pass runs it."""
    if compare == "torch":
        from cpm_jax import torch_peer
    rows = []
    for conv, count in architecture.model_convolutions(config.model).items():
        runners = dict(zip(("jax_forward", "jax_train"), jax_layer(conv, batch, config.model.dtype)))
        if compare == "torch":
            runners.update(zip(("torch_forward", "torch_train"), torch_peer.make_layer(conv, batch)))
        repeats = {name: calls_lasting(LAYER_SAMPLE_S, run) for name, run in runners.items()}
        times = alternate({name: functools.partial(repeat, run, repeats[name]) for name, run in runners.items()},
                          steps, rounds=2 if compare else 1, pause=pause)
        rows.append({**dataclasses.asdict(conv), "count": count,
                     "jax_form": layer_form(conv, batch, config.model.dtype) if jax.default_backend() == "cpu" else "xla",
                     **{f"{name}_ms": 1e3 * statistics.median(seconds) / repeats[name]
                        for name, seconds in times.items()}})
    return rows


def calls_lasting(seconds: float, run: Callable[[], object]) -> int:
    """How many calls of `run` (after one to warm it up) take about `seconds`, at least one."""
    timed(run)
    return max(1, round(seconds / max(timed(run), 1e-6)))


def repeat(run: Callable[[], object], calls: int):
    """Calls `run` `calls` times, each waited for; returns the last result."""
    for _ in range(calls - 1):
        jax.block_until_ready(run())
    return run()


# ---------------------------------------------------------------------------------------------
# The PyTorch peer


class TorchPeer:
    """The same network in PyTorch with the JAX parameters; `step()` trains, `run()` predicts."""

    def __init__(self, config: ml_collections.ConfigDict, params, batch: dict, jax_param_count: int):
        from cpm_jax import torch_peer
        self.module = torch_peer.build(config.model)
        self.param_count = torch_peer.parameter_count(self.module)
        if self.param_count != jax_param_count:
            raise AssertionError(f"the PyTorch peer has {self.param_count:,} parameters, the JAX model "
                                 f"{jax_param_count:,}: not the same network")
        torch_peer.port_params(self.module, jax.device_get(params))
        self.version = torch_peer.torch.__version__
        self.threads = torch_peer.torch.get_num_threads()
        self._batch = batch
        self._train = torch_peer.make_train_step(self.module, config)
        self._infer = torch_peer.make_inference(self.module)

    def step(self):
        return self._train(self._batch)

    def run(self):
        return self._infer(self._batch["image"], self._batch["center_map"])


# ---------------------------------------------------------------------------------------------
# The run


def measure(config: ml_collections.ConfigDict, batch: int, steps: int, parts: tuple[str, ...],
            compare: str = "", pipeline_batches: int = 20, peak_gflops: float = 0.0,
            rounds: int = 0, pause: float = PAUSE_S, on_progress: Callable[[str], None] = lambda line: None) -> dict:
    """Every figure of the module docstring, as one flat dict (`summarise` lists the keys).
    `rounds` of JAX and PyTorch steps alternate (0: one round per STEPS_PER_ROUND steps, 2 to
    MAX_ROUNDS): the finer they alternate, the less a drift of the machine's speed within the
    run tilts the ratios (the demo's training ratio 1.13-1.30x over 3 runs of 2 rounds)."""
    rounds = rounds or max(2, min(MAX_ROUNDS, steps // STEPS_PER_ROUND))
    config = configs.resolve_dtype(config, jax.default_backend())
    if batch % jax.local_device_count():
        raise errors.ConfigError(f"--batch {batch} does not split over {jax.local_device_count()} devices")
    m = config.model
    device = jax.local_devices()[0]
    peak, peak_note = device_peak(device, m.dtype)
    if peak_gflops:
        peak, peak_note = peak_gflops, f"{peak_gflops:g} GFLOP/s (--peak_gflops)"
    forward_flops = 2 * architecture.forward_multiply_adds(m)
    on_progress("timing a large matrix product (the practical peak)")
    matmul = matmul_gflops(m.dtype, 2048 if device.platform == "cpu" else 8192)
    on_progress("timing elementwise passes (memory bandwidth)")
    bandwidth = {"memory_gb_per_s": elementwise_gb_per_s(MEMORY_MIB[device.platform != "cpu"]),
                 "cache_gb_per_s": elementwise_gb_per_s(CACHE_MIB)}
    out = {
        "config": {"input_size": m.input_size, "num_stages": m.num_stages, "dtype": m.dtype,
                   "batch": batch, "trunk_features": m.trunk_features, "stage_features": m.stage_features},
        "backend": jax.default_backend(), "device": device.device_kind, "devices": jax.local_device_count(),
        "host": platform.node(), "cpu_cores": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "convolutions": onednn.status() if device.platform == "cpu" else "XLA's",
        "convolution_forms": convolution_forms(m, batch) if device.platform == "cpu" else {},
        "peak_gflops": peak, "peak_reckoned": peak_note, "matmul_gflops": matmul,
        **bandwidth,
        "forward_gflops_per_image": forward_flops / 1e9,
        "train_gflops_per_image": 3 * forward_flops / 1e9,
    }
    on_progress("initialising parameters")
    state = train_states.create(config, jax.random.key(config.seed))
    param_count = int(sum(x.size for x in jax.tree.leaves(state.params)))
    out["params"] = param_count
    data = random_batch(config, batch)
    runners = {}
    training = inference = None
    again = []  # JAX compilations after the first training step: none unless a step recompiles
    if "train" in parts or "fed" in parts:
        on_progress("compiling the training step")
        training = JaxTraining(config, state, data)
        out["train_compile_s"] = training.compile_s
        out["xla_train_gflops_per_image"] = training.flops / batch / 1e9 if training.flops else None
        with compilations() as again:
            out["first_step_s"] = timed(training.step)  # the first after compiling, as `train` meets it
        runners["jax_train"] = training.step
    if "inference" in parts:
        on_progress("compiling the forward pass")
        inference = JaxInference(config, state.params, data)
        out["inference_compile_s"] = inference.compile_s
        out["xla_forward_gflops_per_image"] = inference.flops / batch / 1e9 if inference.flops else None
        timed(inference.run)
        runners["jax_inference"] = inference.run
    peer = None
    if compare == "torch":
        on_progress("building the PyTorch peer")
        try:
            peer = TorchPeer(config, state.params, data, param_count)
        except ImportError as error:
            out["torch_skipped"] = f"{TORCH_MISSING}: {error}"
        else:
            out.update(torch=peer.version, torch_threads=peer.threads, torch_params=peer.param_count)
            if "jax_train" in runners:
                timed(peer.step)
                runners["torch_train"] = peer.step
            if "jax_inference" in runners:
                timed(peer.run)
                runners["torch_inference"] = peer.run
    on_progress(f"timing {steps} steps of: {', '.join(runners)}")
    with compilations() as timed_compilations:
        times = alternate(runners, steps, rounds if peer else 1, pause)
    out["recompilations"] = len(again) + len(timed_compilations)
    for name, seconds in times.items():
        for key, value in spread(seconds, batch).items():
            out[f"{name}_{key}"] = value
    if training:
        out["train_images_per_s"] = out["jax_train_images_per_s"]
        out["first_step_ratio"] = out["first_step_s"] / out["jax_train_median_s"]
        out["train_gflops_per_s"] = out["train_images_per_s"] * out["train_gflops_per_image"]
        out["train_peak_fraction"] = out["train_gflops_per_s"] / peak if peak else None
        out["train_matmul_fraction"] = out["train_gflops_per_s"] / matmul
    if inference:
        out["inference_images_per_s"] = out["jax_inference_images_per_s"]
        out["inference_gflops_per_s"] = out["inference_images_per_s"] * out["forward_gflops_per_image"]
    out["peak_host_memory_gb"] = peak_host_memory_gb()
    stats = device.memory_stats() if device.platform != "cpu" else None
    out["peak_device_memory_gb"] = stats["peak_bytes_in_use"] / 2 ** 30 if stats and "peak_bytes_in_use" in stats else None
    if peer:
        for kind in ("train", "inference"):
            if f"torch_{kind}_images_per_s" in out:
                out[f"{kind}_ratio"] = out[f"jax_{kind}_images_per_s"] / out[f"torch_{kind}_images_per_s"]
    if "layers" in parts:
        on_progress(f"timing each convolution: {steps} samples of each kind, {LAYER_SAMPLE_S:g} s each")
        out["layers"] = layer_times(config, batch, steps, compare if peer else "", pause)
        for name in ("jax_forward", "jax_train", "torch_forward", "torch_train"):
            if f"{name}_ms" in out["layers"][0]:
                out[f"layers_{name}_ms"] = sum(row["count"] * row[f"{name}_ms"] for row in out["layers"])
    if "pipeline" in parts:
        on_progress(f"timing the input pipeline ({pipeline_batches} batches)")
        out["pipeline_images_per_s"] = pipeline_rate(config, batch, pipeline_batches)
    if "fed" in parts:
        on_progress(f"timing {steps} training steps fed by the pipeline")
        out["fed_train_images_per_s"] = fed_rate(config, training, batch, steps)
    if "pipeline" in parts and training:
        out["bound_by"] = "input pipeline" if out["pipeline_images_per_s"] < out["train_images_per_s"] else "training step"
    return out


def summarise(out: dict) -> str:
    """The table people read."""
    c = out["config"]
    lines = [f"cpm_jax bench: {c['num_stages']} stages, {c['input_size']}x{c['input_size']}, batch {c['batch']}, "
             f"{c['dtype']}, {out['params']:,} parameters; {out['backend']} ({out['device']}, "
             f"{out['devices']} device(s), {out['cpu_cores']} CPU cores), jax {out['jax']}"
             + (f", torch {out['torch']} ({out['torch_threads']} threads)" if "torch" in out else "")]
    forms = ", ".join(f"{count} {FORM_NAMES[form]}" for form, count in out["convolution_forms"].items())
    lines.append(f"convolutions: {forms + '; ' if forms else ''}{out['convolutions']}")
    lines.append(f"peak assumed: {out['peak_reckoned']}; a large matrix product reaches "
                 f"{out['matmul_gflops']:.0f} GFLOP/s here")
    lines.append(f"memory bandwidth: {out['memory_gb_per_s']:.1f} GB/s over arrays larger than the caches, "
                 f"{out['cache_gb_per_s']:.1f} GB/s over {CACHE_MIB} MiB (elementwise read + write)")
    xla = "XLA, without oneDNN's convolutions" if out["convolutions"].startswith("oneDNN") else "XLA"
    lines.append(f"forward FLOPs/image: {out['forward_gflops_per_image']:.3f} G (layer list)"
                 + (f", {out['xla_forward_gflops_per_image']:.3f} G ({xla})" if out.get("xla_forward_gflops_per_image") else ""))
    if out.get("xla_train_gflops_per_image"):
        lines.append(f"train FLOPs/image: {out['train_gflops_per_image']:.3f} G (3 x forward), "
                     f"{out['xla_train_gflops_per_image']:.3f} G ({xla}, whole step)")
    rows = [("", "images/s (median)", "min .. max", "s/step", "vs PyTorch")]
    for kind in ("train", "inference"):
        for who in ("jax", "torch"):
            key = f"{who}_{kind}"
            if f"{key}_images_per_s" in out:
                ratio = out.get(f"{kind}_ratio") if who == "jax" else None
                rows.append((f"{'JAX' if who == 'jax' else 'PyTorch'} {kind}", f"{out[f'{key}_images_per_s']:.1f}",
                             f"{out[f'{key}_min_images_per_s']:.1f} .. {out[f'{key}_max_images_per_s']:.1f}",
                             f"{out[f'{key}_median_s']:.3f}", f"{ratio:.2f}x" if ratio else ""))
    if "pipeline_images_per_s" in out:
        rows.append(("input pipeline alone", f"{out['pipeline_images_per_s']:.1f}", "", "", ""))
    if "fed_train_images_per_s" in out:
        rows.append(("JAX train fed by it", f"{out['fed_train_images_per_s']:.1f}", "", "", ""))
    if len(rows) > 1:
        lines += aligned(rows)
    if "layers" in out:
        lines += layer_table(out)
    if "train_images_per_s" in out:
        fraction = out.get("train_peak_fraction")
        lines.append(f"train: {out['train_gflops_per_s']:.1f} GFLOP/s achieved (direct convolutions' count)"
                     + (f" = {100 * fraction:.0f}% of peak" if fraction else "")
                     + f", {100 * out['train_matmul_fraction']:.0f}% of the matrix product's rate"
                     + f"; compile {out['train_compile_s']:.1f} s; first step after compiling "
                       f"{out['first_step_s']:.3f} s ({out['first_step_ratio']:.1f}x the median), "
                       f"{out['recompilations']} compilation(s) after it")
    if "inference_images_per_s" in out:
        lines.append(f"inference: {out['inference_gflops_per_s']:.1f} GFLOP/s; compile {out['inference_compile_s']:.1f} s")
    if "bound_by" in out:
        lines.append(f"training is bound by the {out['bound_by']}")
    memory = f"peak host memory {out['peak_host_memory_gb']:.2f} GB (process, after the JAX parts)"
    if out.get("peak_device_memory_gb") is not None:
        memory += f"; peak device memory {out['peak_device_memory_gb']:.2f} GB"
    lines.append(memory)
    if "torch_skipped" in out:
        lines.append(f"PyTorch comparison skipped: {out['torch_skipped']}")
    return "\n".join(lines)


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Table lines: each column left-aligned to its widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def layer_table(out: dict) -> list[str]:
    """The `layers` part as table lines: per convolution and summed over the model (x count),
    milliseconds and the PyTorch / JAX time ratio (> 1: JAX is faster, as the images/s ratios)."""
    torch_ = "layers_torch_train_ms" in out
    head = ("convolution (per batch)", "count", "JAX form", "JAX fwd ms", "JAX train ms")
    head += ("PyTorch fwd ms", "PyTorch train ms", "fwd vs PyTorch", "train vs PyTorch") if torch_ else ()

    def cells(label, count, form, jf, jt, tf=None, tt=None):
        row = (label, str(count), form, f"{jf:.2f}", f"{jt:.2f}")
        return row + (f"{tf:.2f}", f"{tt:.2f}", f"{tf / jf:.2f}x", f"{tt / jt:.2f}x") if torch_ else row

    rows = [head]
    for r in out["layers"]:
        label = (f"{r['size']}x{r['size']}x{r['in_channels']} -> {r['features']}, {r['kernel']}x{r['kernel']}"
                 + (" (image)" if r["on_image"] else ""))
        rows.append(cells(label, r["count"], r["jax_form"], r["jax_forward_ms"], r["jax_train_ms"],
                          r.get("torch_forward_ms"), r.get("torch_train_ms")))
    rows.append(cells("all convolutions of the model", sum(r["count"] for r in out["layers"]), "",
                      out["layers_jax_forward_ms"], out["layers_jax_train_ms"],
                      out.get("layers_torch_forward_ms"), out.get("layers_torch_train_ms")))
    lines = aligned(rows)
    if "jax_train_median_s" in out:
        step_ms = 1e3 * out["jax_train_median_s"]
        lines.append(f"the whole JAX training step: {step_ms:.1f} ms, of which its convolutions timed alone "
                     f"{out['layers_jax_train_ms']:.1f} ms ({100 * out['layers_jax_train_ms'] / step_ms:.0f}%)")
    return lines


FLAGS = flags.FLAGS


def main(argv) -> None:
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    parts = tuple(p for p in FLAGS.parts if p)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise errors.ConfigError(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    configs.validate(config, registry.DATASETS if {"pipeline", "fed"} & set(parts) else None)
    batch = FLAGS.batch or config.training.global_batch_size
    out = measure(config, batch, FLAGS.steps, parts, FLAGS.compare, FLAGS.pipeline_batches,
                  FLAGS.peak_gflops, on_progress=lambda line: print(f"bench: {line}", flush=True))
    print(summarise(out))
    if FLAGS.json:
        print(json.dumps(out))


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.mark_flags_as_required(["config"])
    flags.DEFINE_integer("batch", 0, "Images per step (0: the config's training.global_batch_size).", lower_bound=0)
    flags.DEFINE_integer("steps", 10, "Timed steps of each kind, after compilation and the first step.", lower_bound=1)
    flags.DEFINE_list("parts", list(DEFAULT_PARTS), f"What to measure, of: {', '.join(PARTS)}.")
    flags.DEFINE_enum("compare", "", ["", "torch"], "Also time the same network in PyTorch (pip install -e '.[bench]').")
    flags.DEFINE_integer("pipeline_batches", 20, "Batches timed of the input pipeline alone.", lower_bound=1)
    flags.DEFINE_float("peak_gflops", 0.0, "The device's FP32 (CPU) or compute-dtype peak, GFLOP/s (0: reckon it).")
    flags.DEFINE_bool("json", False, "Print one JSON object of every figure as the last line.")
    cli.run(main)
