"""Timing primitives of the benchmarks: a call waited for, alternating runners, medians and spread.

Every time here is wall-clock seconds (`time.perf_counter`) of calls whose JAX results were
waited for (`jax.block_until_ready`); rates are images per second. `alternate` interleaves the
runners being compared (JAX and PyTorch, forward and training) so that a drift of the machine's
speed during a run hits all of them alike, and leaves out the first call after each pause, which
a loop of steps never meets. `compilations` counts XLA compilations (JAX's monitoring events),
so a benchmark can tell a recompiling step from a slow one.
"""
import contextlib
import statistics
import time
from typing import Callable

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # one per XLA compilation
# One timed sample of a single convolution (or elementwise pass) repeats it for about this long:
# a millisecond call timed alone after `alternate`'s pause meets cores still waking (up to 2x slower).
LAYER_SAMPLE_S = 0.05
# `alternate`'s pause between runs of one runner's calls, for the worker threads' spinning to end.
# The first call after it, which a loop of steps never meets, is not timed: it can be much slower
# (page faults on memory another runner freed, cores waking).
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


def calls_lasting(seconds: float, run: Callable[[], object]) -> int:
    """How many calls of `run` (after one to warm it up) take about `seconds`, at least one."""
    timed(run)
    return max(1, round(seconds / max(timed(run), 1e-6)))


def repeat(run: Callable[[], object], calls: int):
    """Calls `run` `calls` times, each waited for; returns the last result."""
    for _ in range(calls - 1):
        jax.block_until_ready(run())
    return run()
