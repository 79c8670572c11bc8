"""The user-facing errors: one small family, each message naming the file, index or key.

A `UserError` is something the user can fix (a path, a file's contents, a config value, a flag).
`str(error)` is the whole message: it names the file, example index or config key and, where
there is one, the fix. Every CLI catches `UserError` in one place (`cli.run`), prints it in a
line or two and exits 1; the traceback only with `--verbosity 1` (or `-v 1`). Anything else that
escapes is a bug and keeps its traceback.

Each class also derives from the built-in exception it replaces, so `except ValueError` still
catches a bad value.
"""


class UserError(Exception):
    """Something the user can fix; the message names the file, index or key."""


class ConfigError(UserError, ValueError):
    """A config file, key or value: the message names the key (`config.model.num_stages`)."""


class DataError(UserError, ValueError):
    """A dataset's files: a missing directory, an annotation file of the wrong layout, a split
    with nothing to read. The message names the file."""


class BadExampleError(DataError):
    """One example that cannot be used (missing or undecodable image, NaN joints, ...); the
    message names its file and index. With `data.skip_bad_examples` it is skipped instead."""


class AnnotationError(DataError):
    """Annotations and predictions that cannot be scored together; the message names the file."""


class PredictionFileError(UserError, ValueError):
    """A prediction file that cannot be read or written; the message starts with its path."""


class CheckpointError(UserError, RuntimeError):
    """A workdir whose checkpoint or config.json cannot be used; the message names the directory."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """A workdir without a completed checkpoint; the message names the directory."""


class InputError(UserError, ValueError):
    """A command-line value or a user's own image that cannot be used; the message names it."""


class OutputError(UserError, OSError):
    """A place results cannot be written to (a read-only directory, a file where a directory
    belongs, a full disk); the message names the path and the reason (cpm_jax/outputs.py)."""


class DivergenceError(UserError, ArithmeticError):
    """Training produced a non-finite loss or gradient (`training.nonfinite = "stop"`); the
    message names the step and the stage(s), and the newest checkpoint, which holds no bad state."""
