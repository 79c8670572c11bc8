"""A checkpoint save that failed or was lost, in one line: which save, why (for a full disk, the
space it needs and the space free), and the newest checkpoint that is still intact, from which
the same command continues (`checkpointing.save` / `wait` / `full_disk` raise these CheckpointErrors).

Orbax saves in background threads: a failure there is logged by two or three of them, each with
a traceback, and raised again in the caller's thread at the next `wait_until_finished` or save;
`quiet_orbax_echoes` drops those log records, since the raised error is reported instead."""
import errno
import logging as std_logging
import os
import re
import shutil

from cpm_jax import errors


def failed(mngr, step: int, size: int, error: BaseException, reason: str) -> errors.CheckpointError:
    """The error of a failed save of `step` (`size` bytes of state); `reason`: the error in a line."""
    directory = str(mngr.directory)
    if no_space(error):
        try:
            free = f"{megabytes(shutil.disk_usage(directory).free)} free there"
        except OSError:
            free = "free space unknown"
        reason = (f"no space left on the device (the checkpoint needs at least {megabytes(size)}, the size of the "
                  f"state's arrays; {free}); free some space, or use a --workdir on a larger disk")
    return errors.CheckpointError(f"cannot save checkpoint {step} in {directory}: {reason}; {intact(mngr, step)}")


def disk_full(mngr, reason: str) -> errors.CheckpointError:
    """The error of another write of the run (TensorBoard events, metrics.json, pictures) that
    found the disk full while no save was failing; `reason`: its error in a line."""
    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", reason)      # TensorFlow's op prefix
    return errors.CheckpointError(f"no space left on the device of {os.path.dirname(str(mngr.directory))} "
                                  f"({reason}); free some space, or use a --workdir on a larger disk; {intact(mngr)}")


def not_saved(mngr, step: int) -> errors.CheckpointError:
    """The error of a step that must be on disk (the final one, a stop's) and is not: its save
    was declined by the manager."""
    return errors.CheckpointError(f"checkpoint {step} is not in {mngr.directory}: the checkpoint manager declined "
                                  f"to save it; {intact(mngr, step)}")


def removed(mngr, step: int) -> errors.CheckpointError:
    """The error of a save that completed and whose step is gone (a manager that keeps none)."""
    return errors.CheckpointError(
        f"checkpoint {step} was written to {mngr.directory} and then removed by its manager, which keeps no "
        f"checkpoint (max_to_keep = 0; config.training.keep_checkpoints must be >= 1): {intact(mngr, step)}")


def intact(mngr, step: int | None = None) -> str:
    """The newest checkpoint the same command continues from: the newest before `step` (the one
    whose save failed), or the newest of all when no save is named."""
    older = [s for s in mngr.all_steps() if step is None or s < step]
    if not older:
        if step is None:
            return "no checkpoint was kept yet, so the same command starts the run again"
        return f"no checkpoint before step {step} was kept, so the same command starts the run again"
    newest = max(older)
    which = "the newest" if step is None else "the previous"
    return (f"{which} checkpoint {newest} ({os.path.join(str(mngr.directory), str(newest))}) is intact, "
            "and the same command continues from it")


def no_space(error: BaseException | None) -> bool:
    """Whether `error` or its cause is ENOSPC (TensorStore: "... No space left on device [os_error_code='28']")."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "os_error_code='28'" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def megabytes(size: int) -> str:
    """`size` bytes for a message: 59 KB, 12.5 MB, 3.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale / 10:
            return f"{size / scale:.1f} {unit}"
    return f"{max(size, 1) / 1e3:.0f} KB"


class _OrbaxSaveFailureFilter(std_logging.Filter):
    """Drops Orbax's ERROR records of a failed background save (module docstring)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        echo = any(text in str(record.msg) for text in ("raised an exception", "background save thread",
                                                         "Save Finalize thread"))
        return not (echo and record.levelno >= std_logging.ERROR and "orbax" in record.pathname)


def quiet_orbax_echoes() -> None:
    """Installs the filter on absl's logger (Orbax logs through absl), once per process."""
    absl_logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxSaveFailureFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxSaveFailureFilter())
