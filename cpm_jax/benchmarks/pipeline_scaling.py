"""The input pipeline's images/s by the CPU cores it may use, against what the training step consumes.

An accelerator trains far faster than a CPU, so the tf.data pipeline (crop, rotate, scale,
targets, partly Python under `tf.numpy_function`) can become what bounds training. `rate` builds
the training pipeline exactly as `pipeline.train_batches` does (`pipeline.train_examples`,
batched, prefetched, deterministic, without autotuning) but with its threads limited: a private
pool of n threads (`threading.private_threadpool_size`, which also sets the parallel maps'
width) and one thread per operation (`threading.max_intra_op_parallelism`); n threads stand for
n cores. `by_cores` measures it for each count and says which counts keep up with the step.
Units: images/s (after 2 batches that fill the buffers).
"""
import os
from typing import Callable

import ml_collections

from cpm_jax.benchmarks.runners import stream_rate, with_batch


def core_counts(requested: list[str], available: int) -> list[int]:
    """The counts of `requested` ("1", "2", ..., "all") at most `available`, each once, ascending."""
    counts = {available if str(c).strip() == "all" else int(c) for c in requested if str(c).strip()}
    return sorted(c for c in counts if 1 <= c <= available)


def rate(config: ml_collections.ConfigDict, batch: int, batches: int, threads: int) -> float:
    """Images/s of the training pipeline of `config` at `batch`, on `threads` threads."""
    from cpm_jax import tf_loader
    from data_pipelines import pipeline
    tf = tf_loader.import_tensorflow()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    config = with_batch(config, batch)
    ds = pipeline.train_examples(config).map(lambda e: {k: v for k, v in e.items() if k != "index"})
    ds = ds.batch(batch, drop_remainder=True).prefetch(2).with_options(options)
    with pipeline.NumpyBatches(ds, 1) as stream:
        return stream_rate(stream, batch, batches)


def by_cores(config: ml_collections.ConfigDict, batch: int, batches: int, counts: list[int],
             consumed: float | None, may_run: Callable[[], bool] = lambda: True) -> dict:
    """`rate` for each count of `counts` (in order, while `may_run()`), each set against
    `consumed` (the training step's images/s; None: unknown): rows of cores, images_per_s,
    fraction_of_step (pipeline / step) and keeps_up; cores_to_keep_up (the fewest measured cores
    that keep up, None if none does); skipped (counts left out by `may_run`)."""
    rows, skipped = [], []
    for cores in counts:
        if not may_run():
            skipped.append(cores)
            continue
        images_per_s = rate(config, batch, batches, cores)
        rows.append({"cores": cores, "images_per_s": images_per_s,
                     "fraction_of_step": images_per_s / consumed if consumed else None,
                     "keeps_up": images_per_s >= consumed if consumed else None})
    keeping_up = [row["cores"] for row in rows if row["keeps_up"]]
    return {"batch": batch, "batches": batches, "cpu_cores": len(os.sched_getaffinity(0)),
            "step_images_per_s": consumed, "by_cores": rows,
            "cores_to_keep_up": min(keeping_up) if keeping_up else None, "skipped_cores": skipped}
