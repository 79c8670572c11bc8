"""Stopping a run on request: SIGTERM (one process) or JAX's preemption service (several), and
Ctrl-C (SIGINT, one process), ask the training loop to save a checkpoint after the current step
and stop (`Preempted`: exit 0 after SIGTERM, 130 after Ctrl-C). During an evaluation
(`Preemption.abandonable`) a signal abandons it at once (`Abandoned`): the step it scores is
saved, and the same command evaluates it again. A second Ctrl-C stops at once (KeyboardInterrupt)."""
import contextlib
import signal
import threading

import jax
from absl import logging


class Preempted(Exception):
    """The run stopped early on request (SIGTERM, a preemption, Ctrl-C) after saving a checkpoint
    at `step` in `directory`; the same command continues it. `during`: what was abandoned (an
    evaluation), `then`: what the same command does next."""

    def __init__(self, step: int, directory: str, signal_name: str = "SIGTERM", during: str = "",
                 then: str = "continue"):
        self.what = "interrupted (Ctrl-C)" if signal_name == "SIGINT" else "preempted"
        during = f" during {during}" if during else ""
        super().__init__(f"{self.what} at step {step}{during}: checkpoint saved in {directory}/{step}; run the "
                         f"same command to {then}")
        self.step, self.directory, self.signal_name = step, directory, signal_name

    @property
    def exit_status(self) -> int:
        """0 after SIGTERM or a preemption (a planned stop), 130 after Ctrl-C (128 + SIGINT)."""
        return 130 if self.signal_name == "SIGINT" else 0


class Abandoned(BaseException):
    """Raised by the signal handler inside `Preemption.abandonable()`: stop the evaluation now.
    A BaseException, so that no library's `except Exception` inside the evaluation keeps it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class Preemption:
    """Whether the run has been asked to stop: after the step it has just finished, every process
    saves a checkpoint at that step and exits.

    One process: SIGTERM and SIGINT set a flag (the handlers are installed while the `with` block
    runs, from the main thread only, and the previous ones restored after it); inside
    `abandonable()` they raise `Abandoned` instead. A later SIGTERM is only logged; a later SIGINT
    raises KeyboardInterrupt (stop at once). Several processes (jax.distributed): JAX's preemption
    service, which watches SIGTERM itself, tells every process the same step to stop at:
    `CheckpointManager.reached_preemption(step)` (`multihost_utils.reached_preemption_sync_point`),
    called at every step on every process; Ctrl-C keeps Python's default there. Orbax's check
    alone never fires in a single process (it needs jax.distributed's client), so a single
    process uses the handlers."""

    def __init__(self, mngr, start_step: int, num_steps: int | None = None):
        self._mngr, self._num_steps = mngr, num_steps
        self._multiprocess = jax.process_count() > 1
        self.signal_name = None             # the first stop signal received ("SIGTERM", "SIGINT")
        self._step = start_step             # the last step finished
        self._abandonable = False
        self._previous = {}

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is not threading.main_thread():
            logging.warning("training outside the main thread: SIGTERM will not save a checkpoint first")
        elif not self._multiprocess:
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = name
            if self._abandonable:
                logging.warning("%s received during the evaluation of step %d: abandoning it and exiting", name,
                                self._step)
                raise Abandoned(name)
            if self._num_steps is not None and self._step >= self._num_steps:
                logging.warning("%s received after the last step (%d): exiting before the final evaluation", name,
                                self._step)
            else:
                logging.warning("%s received during step %d: finishing it, then saving a checkpoint and exiting",
                                name, self._step + 1)
        elif signum == signal.SIGINT:
            logging.warning("SIGINT received again: stopping at once")
            raise KeyboardInterrupt
        else:
            logging.warning("%s received again: already stopping after step %d", name, self._step)

    @contextlib.contextmanager
    def abandonable(self):
        """A block (an evaluation of the last step finished) that a stop signal ends at once by
        raising `Abandoned`; so does a signal received before it started."""
        if self.signal_name is not None:
            raise Abandoned(self.signal_name)
        self._abandonable = True
        try:
            yield
        finally:
            self._abandonable = False

    def reached(self, step: int) -> bool:
        """Whether to save at `step` (just finished) and stop; call it once per step."""
        self._step = step
        if self._multiprocess:
            return self._mngr.reached_preemption(step)
        return self.signal_name is not None
