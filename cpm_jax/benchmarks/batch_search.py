"""The training step at one batch size, and the largest batch that fits in the device's memory.

`step_at` compiles the step `train` runs (`step.parallel_train_step`, the state placed by
`step.replicate` and donated, one fixed random batch resident on the devices) ahead of time, so
that XLA's memory plan of it is known (`memory_gb`), times it and turns the rate into TFLOP/s
(the layer list's count, `architecture.forward_multiply_adds` x 2 FLOPs x 3 for forward and
backward, as `bench` counts) and a fraction of the chip's peak; an out-of-memory error (XLA's
RESOURCE_EXHAUSTED, at compilation or in a step) comes back as "does not fit". `largest_batch`
doubles the batch from one that fits until one does not (or a limit), then bisects between the
two to a resolution, within a time budget: each try compiles the step anew (tens of seconds on
an accelerator), so doublings that the memory plan of a measured batch says fit with room
(`predicted_largest`) are skipped. "Fits" is under JAX's default allocator, as `train` runs
(XLA_PYTHON_CLIENT_MEM_FRACTION and _PREALLOCATE as the environment sets them).
Units: images/s, TFLOP/s (1e12 FLOPs a second), seconds, GB (2^30 bytes).
"""
import gc
import statistics
import time
from typing import Callable

import jax
import ml_collections

from cpm_jax.benchmarks import hardware
from cpm_jax.benchmarks.runners import per_device, random_batch
from cpm_jax.benchmarks.timing import timed
from cpm_jax.model import architecture
from cpm_jax.training import step as step_lib

OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory")
ROOM = 0.8  # a doubling is skipped where the predicted largest batch is at least this much larger


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is JAX/XLA running out of device memory."""
    return any(words in str(error) for words in OUT_OF_MEMORY)


def train_tflops_per_image(model: ml_collections.ConfigDict) -> float:
    """TFLOPs of one image's training step by the layer list: 3 forward passes' worth."""
    return 3 * 2 * architecture.forward_multiply_adds(model) / 1e12


def memory_gb(compiled) -> dict | None:
    """XLA's memory plan of a compiled computation, per device: arguments, outputs, the part of
    them that aliases (donated buffers), temporaries, and the total it needs; None where the
    backend gives none."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if m is None:
        return None
    sizes = {"argument_gb": m.argument_size_in_bytes, "output_gb": m.output_size_in_bytes,
             "alias_gb": m.alias_size_in_bytes, "temp_gb": m.temp_size_in_bytes}
    sizes["total_gb"] = sizes["argument_gb"] + sizes["output_gb"] - sizes["alias_gb"] + sizes["temp_gb"]
    return {k: v / 2 ** 30 for k, v in sizes.items()}


def step_at(config: ml_collections.ConfigDict, state, batch: int, steps: int) -> dict:
    """The training step of `config` (its model.dtype resolved) at `batch`: {"batch", "dtype",
    "fits"} and, where it fits, compile_s, median_s, images_per_s, tflops_per_s,
    bf16_peak_fraction and dtype_peak_fraction (None where the peak is unknown; on a CPU both
    are set against its FP32 reckoning), memory (`memory_gb`), peak_device_memory_gb (JAX's peak
    in this process so far; None on a CPU); where it does not, the error's first line."""
    start = time.perf_counter()
    out = {"batch": batch, "dtype": config.model.dtype}
    held = {}
    try:
        held["state"] = step_lib.replicate(state)
        held["rng"] = step_lib.replicate(jax.random.key(1))
        held["batch"] = jax.pmap(lambda x: x)(per_device(random_batch(config, batch), jax.local_device_count()))
        compiling = time.perf_counter()
        held["step"] = step_lib.parallel_train_step(config).lower(held["state"], held["batch"], held["rng"]).compile()
        compile_s = time.perf_counter() - compiling

        def run():
            held["state"], metrics = held["step"](held["state"], held["batch"], held["rng"])
            return metrics["loss"]

        timed(run)  # the first step after compiling
        seconds = [timed(run) for _ in range(steps)]
    except Exception as error:  # noqa: BLE001 -- only out-of-memory errors are expected
        if not is_out_of_memory(error):
            raise
        out.update(fits=False, error=str(error).strip().splitlines()[0][:300])
    else:
        device = jax.local_devices()[0]
        median = statistics.median(seconds)
        tflops = batch / median * train_tflops_per_image(config.model)
        bf16_peak = hardware.device_peak(device, "bfloat16")[0]
        own_peak = hardware.device_peak(device, config.model.dtype)[0]
        out.update(fits=True, compile_s=compile_s, median_s=median, images_per_s=batch / median,
                   tflops_per_s=tflops,
                   bf16_peak_fraction=1e3 * tflops / bf16_peak if bf16_peak else None,
                   dtype_peak_fraction=1e3 * tflops / own_peak if own_peak else None,
                   memory=memory_gb(held["step"]), peak_device_memory_gb=hardware.peak_device_memory_gb(device))
    finally:
        held.clear()  # the state, the batch and the executable leave the device before the next try
        gc.collect()
    out["wall_s"] = time.perf_counter() - start
    return out


def predicted_largest(measured: dict, available_gb: float | None) -> int | None:
    """The largest batch a measured try's memory plan (`step_at`'s dict) predicts to fit in
    `available_gb`, temporaries growing in proportion to the batch; None where unknown."""
    memory = measured.get("memory") if measured and measured.get("fits") else None
    if not memory or not available_gb or memory["temp_gb"] <= 0:
        return None
    per_image = memory["temp_gb"] / measured["batch"]
    return max(0, int((available_gb - (memory["total_gb"] - memory["temp_gb"])) / per_image))


def largest_batch(fits: Callable[[int], bool], start: int, limit: int, multiple: int = 1,
                  resolution: float = 0.25, may_try: Callable[[int], bool] = lambda batch: True,
                  known: dict[int, bool] | None = None, guess: int | None = None) -> dict:
    """The largest batch (a multiple of `multiple`, at most `limit`) for which `fits(batch)`:
    doubling from `start`, then bisecting between the largest that fit and the smallest that did
    not, until they are within `resolution` x the former (or `multiple`). A doubling is skipped
    where the next one is still at most ROOM x `guess` (a predicted largest batch). `may_try(batch)`
    False stops the search before that try (a time budget); `known` holds results already
    measured. Returns largest (0: none fits), smallest_failed (None: none failed), tried
    ([batch, fits] in order, `known` ones included) and complete (False: stopped by `may_try`)."""
    results = dict(known or {})
    tried = [[b, f] for b, f in results.items()]
    complete = True

    def attempt(batch: int) -> bool | None:
        nonlocal complete
        if batch in results:
            return results[batch]
        if not may_try(batch):
            complete = False
            return None
        results[batch] = bool(fits(batch))
        tried.append([batch, results[batch]])
        return results[batch]

    lo, hi = 0, None
    top = limit // multiple * multiple
    batch = min(start, top)
    while True:  # doubling, the last step to the limit itself
        ok = attempt(batch)
        if ok is None:
            break
        if not ok:
            hi = batch
            break
        lo = batch
        batch *= 2
        while guess and 2 * batch <= ROOM * guess:
            batch *= 2
        batch = min(batch, top)
        if batch <= lo:
            break
    while complete and hi is not None and hi - lo > max(multiple, resolution * lo):  # bisecting
        mid = (lo + hi) // 2 // multiple * multiple
        if mid <= lo:
            break
        ok = attempt(mid)
        if ok is None:
            break
        lo, hi = (mid, hi) if ok else (lo, mid)
    return {"largest": lo, "smallest_failed": hi, "limit": limit, "guess": guess, "tried": tried,
            "complete": complete}
