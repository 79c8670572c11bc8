"""Stopping a run on request: SIGTERM (one process) or JAX's preemption service (several) asks the
training loop to save a checkpoint after the current step and stop (`Preempted`)."""
import signal
import threading

import jax
from absl import logging


class Preempted(Exception):
    """The run stopped early on request (SIGTERM, a preemption) after saving a checkpoint at
    `step` in `directory`; the same command continues it."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted at step {step}: checkpoint saved in {directory}/{step}; run the same "
                         "command to continue")
        self.step, self.directory = step, directory

class Preemption:
    """Whether the run has been asked to stop: after the step it has just finished, every process
    saves a checkpoint at that step and exits.

    One process: SIGTERM (what Kubernetes and SLURM send before killing) sets a flag; the handler
    is installed while the `with` block runs (from the main thread only) and the previous one
    restored after it; later SIGTERMs are only logged (SIGKILL still ends the process at once).
    Several processes (jax.distributed): JAX's preemption service, which watches SIGTERM itself,
    tells every process the same step to stop at: `CheckpointManager.reached_preemption(step)`
    (`multihost_utils.reached_preemption_sync_point`), called at every step on every process.
    Orbax's check alone never fires in a single process (it needs jax.distributed's client), so
    a single process uses the handler."""

    def __init__(self, mngr, start_step: int):
        self._mngr = mngr
        self._multiprocess = jax.process_count() > 1
        self._signalled_in_step = None      # the step that was running when SIGTERM arrived
        self._step = start_step             # the last step finished
        self._previous = None

    def __enter__(self) -> "Preemption":
        if not self._multiprocess:
            if threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            else:
                logging.warning("training outside the main thread: SIGTERM will not save a checkpoint first")
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        if self._signalled_in_step is None:
            self._signalled_in_step = self._step + 1
            logging.warning("SIGTERM received during step %d: finishing it, then saving a checkpoint and exiting",
                            self._step + 1)
        else:
            logging.warning("SIGTERM received again: already stopping after step %d", self._signalled_in_step)

    def reached(self, step: int) -> bool:
        """Whether to save at `step` (just finished) and stop; call it once per step."""
        self._step = step
        if self._multiprocess:
            return self._mngr.reached_preemption(step)
        return self._signalled_in_step is not None
