"""One benchmark run of `python -m cpm_jax.bench`: every figure, as one flat dict (`measure`).

The parts (PARTS; `--parts`):
  * train: the training step (`runners.JaxTraining`) on a fixed random batch: compile time, the
    first step after compilation, the median and spread of the timed steps;
  * inference: the forward pass (eval mode, one scale);
  * pipeline: the tf.data training pipeline alone; fed: training steps fed by it, which says
    whether the input or the step bounds training;
  * layers (only when asked): each distinct convolution timed alone (`layers.layer_times`).
Always: FLOPs per image from the layer list (`architecture.forward_multiply_adds`, 1 MAC = 2
FLOPs; a training step is 3x the forward pass; a direct convolution's count, so where
`convolution.py` takes the DFT form the achieved rate can pass the peak) and from XLA's cost
analysis (which leaves out the zero padding and oneDNN's custom calls), set against the device's
peak, a large matrix product's rate and the memory bandwidth (`hardware.py`); peak host and
device memory. `compare` (comma-separated): "torch", the same network in PyTorch
(`runners.TorchPeer`), and the exported model in "onnxruntime", "tensorflow", "tflite"
(`exported.ExportedPeers`, inference only) time the same batch in the same process, in
alternating rounds with JAX; the JAX / peer ratios follow (> 1: JAX is faster).
Units: images/s, seconds, GFLOP/s, GB/s, GB; the keys are those `report.summarise` reads.
"""
import os
import platform as host_platform
from typing import Callable

import jax
import ml_collections

from cpm_jax import configs, errors
from cpm_jax.benchmarks import exported, hardware, layers
from cpm_jax.benchmarks.runners import JaxInference, JaxTraining, TorchPeer, fed_rate, pipeline_rate, random_batch
from cpm_jax.benchmarks.timing import LAYER_SAMPLE_S, PAUSE_S, alternate, compilations, spread, timed
from cpm_jax.cpu import onednn
from cpm_jax.model import architecture
from cpm_jax.training import state as train_states

PARTS = ("train", "inference", "pipeline", "fed", "layers")
PEERS = ("torch",) + tuple(exported.RUNTIME_FORMATS)    # `compare`'s names
DEFAULT_PARTS = PARTS[:4]
STEPS_PER_ROUND, MAX_ROUNDS = 5, 8  # `measure`'s alternation of JAX and PyTorch
TORCH_MISSING = "PyTorch is not installed (pip install -e '.[bench]' adds the CPU build, torch 2.13)"


def measure(config: ml_collections.ConfigDict, batch: int, steps: int, parts: tuple[str, ...],
            compare: str = "", pipeline_batches: int = 20, peak_gflops: float = 0.0,
            rounds: int = 0, pause: float = PAUSE_S, on_progress: Callable[[str], None] = lambda line: None) -> dict:
    """Every figure of the module docstring, as one flat dict (`report.summarise` lists the keys).
    `rounds` of JAX and PyTorch steps alternate (0: one round per STEPS_PER_ROUND steps, 2 to
    MAX_ROUNDS): the finer they alternate, the less a drift of the machine's speed within the
    run tilts the ratios."""
    rounds = rounds or max(2, min(MAX_ROUNDS, steps // STEPS_PER_ROUND))
    peers = tuple(p for p in compare.split(",") if p)
    if set(peers) - set(PEERS):
        raise errors.ConfigError(f"--compare {compare}: known: {', '.join(PEERS)}")
    if set(peers) & set(exported.RUNTIME_FORMATS) and "inference" not in parts:
        raise errors.ConfigError(f"--compare {compare}: exported models are timed predicting; add inference to --parts")
    config = configs.resolve_dtype(config, jax.default_backend())
    if batch % jax.local_device_count():
        raise errors.ConfigError(f"--batch {batch} does not split over {jax.local_device_count()} devices")
    m = config.model
    device = jax.local_devices()[0]
    peak, peak_note = hardware.device_peak(device, m.dtype)
    if peak_gflops:
        peak, peak_note = peak_gflops, f"{peak_gflops:g} GFLOP/s (--peak_gflops)"
    forward_flops = 2 * architecture.forward_multiply_adds(m)
    on_progress("timing a large matrix product (the practical peak)")
    matmul = hardware.matmul_gflops(m.dtype, 2048 if device.platform == "cpu" else 8192)
    on_progress("timing elementwise passes (memory bandwidth)")
    bandwidth = {"memory_gb_per_s": hardware.elementwise_gb_per_s(hardware.MEMORY_MIB[device.platform != "cpu"]),
                 "cache_gb_per_s": hardware.elementwise_gb_per_s(hardware.CACHE_MIB)}
    out = {
        "config": {"input_size": m.input_size, "num_stages": m.num_stages, "dtype": m.dtype,
                   "batch": batch, "trunk_features": m.trunk_features, "stage_features": m.stage_features},
        "backend": jax.default_backend(), "device": device.device_kind, "devices": jax.local_device_count(),
        "host": host_platform.node(), "cpu_cores": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "convolutions": onednn.status() if device.platform == "cpu" else "XLA's",
        "convolution_forms": layers.convolution_forms(m, batch) if device.platform == "cpu" else {},
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
    if "torch" in peers:
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
    runtimes = tuple(p for p in peers if p in exported.RUNTIME_FORMATS)
    served = None
    if runtimes:
        on_progress(f"exporting the model for {', '.join(runtimes)} and checking it there")
        served = exported.ExportedPeers(config, state.params, data, runtimes, on_progress)
        out["runtime_versions"] = served.versions
        for name, run in served.runners().items():
            timed(run)
            runners[name] = run
    on_progress(f"timing {steps} steps of: {', '.join(runners)}")
    try:
        with compilations() as timed_compilations:
            times = alternate(runners, steps, rounds if peer or served else 1, pause)
    finally:
        if served:
            served.close()
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
    out["peak_host_memory_gb"] = hardware.peak_host_memory_gb()
    out["peak_device_memory_gb"] = hardware.peak_device_memory_gb(device)
    if peer:
        for kind in ("train", "inference"):
            if f"torch_{kind}_images_per_s" in out:
                out[f"{kind}_ratio"] = out[f"jax_{kind}_images_per_s"] / out[f"torch_{kind}_images_per_s"]
    for name in runtimes if served else ():
        out[f"{name}_inference_ratio"] = out["jax_inference_images_per_s"] / out[f"{name}_inference_images_per_s"]
    if "layers" in parts:
        on_progress(f"timing each convolution: {steps} samples of each kind, {LAYER_SAMPLE_S:g} s each")
        out["layers"] = layers.layer_times(config, batch, steps, "torch" if peer else "", pause)
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
