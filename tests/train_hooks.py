"""Faults injected into a `python -m cpm_jax.train` process, for the command-line tests of what
no healthy machine does on demand: a full disk during a save, a checkpoint manager that declines
or drops saves, an evaluation or a save long enough to be interrupted. `train_cli.hooked_command` runs
the train command in a process that calls one of these first; each reads its setting from the
environment (CPM_TEST_HOOK_ARG)."""
import errno
import os
import time

ARG = "CPM_TEST_HOOK_ARG"


def _busy(seconds: float) -> None:
    """Waits `seconds` in slices of 0.1 s, returning to the interpreter between them as real work
    does between batches: a signal the kernel hands to another of the process's threads (XLA's,
    TensorFlow's) runs its Python handler within a slice, not after one long sleep."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


def disk_full() -> None:
    """Every array write of checkpoint step $CPM_TEST_HOOK_ARG fails with ENOSPC, where a full
    disk fails it: in Orbax's background save thread (TensorStore's write of each array)."""
    from orbax.checkpoint._src.serialization import type_handlers
    step, write = int(os.environ[ARG]), type_handlers.NumpyHandler._open_and_write

    async def full(self, value, tspec, ts_context):
        if f"/{step}.orbax-checkpoint-tmp" in str(tspec):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await write(self, value, tspec, ts_context)

    type_handlers.NumpyHandler._open_and_write = full


def declined_saves() -> None:
    """The checkpoint manager declines every save (returns False, writes nothing), as Orbax does
    for a step its save policy skips."""
    import orbax.checkpoint as ocp
    ocp.CheckpointManager.save = lambda self, step, *args, **kwargs: False


def keep_none() -> None:
    """The training checkpoints' manager keeps none (max_to_keep = 0): each save is written, then removed."""
    from cpm_jax.training import checkpointing
    manager = checkpointing.manager
    checkpointing.manager = lambda workdir, keep: manager(workdir, 0)


def slow_evaluation() -> None:
    """Every held-out evaluation first waits $CPM_TEST_HOOK_ARG seconds (a large held-out set)."""
    from cpm_jax.evaluation import evaluators
    run, seconds = evaluators.CropEvaluator.run, float(os.environ[ARG])

    def slow(self, variables):
        _busy(seconds)
        return run(self, variables)

    evaluators.CropEvaluator.run = slow


def slow_saves() -> None:
    """Every checkpoint save first waits $CPM_TEST_HOOK_ARG seconds (a slow disk), saying so on stderr."""
    import sys

    from cpm_jax.training import checkpointing
    save, seconds = checkpointing.save, float(os.environ[ARG])

    def slow(mngr, step, state, metrics=None):
        print(f"test hook: saving step {step} slowly", file=sys.stderr, flush=True)
        _busy(seconds)
        return save(mngr, step, state, metrics)

    checkpointing.save = slow
