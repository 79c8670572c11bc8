"""Where results go: checked before the work starts; a write that fails later named in one line.

    outputs.check_directory(FLAGS.workdir, "--workdir")   # first thing in main: before any work
    outputs.check_file(FLAGS.gallery, "--gallery")
    with outputs.writing(path):                            # a late failure (a full disk)
        figure.savefig(path)

A place is usable when the nearest part of its path that exists is a directory in which a file can
be created: tried (a file made and removed at once), since permission bits do not stop root while
a read-only mount does. A missing directory is not made here: nothing is left behind. Each problem
is an `errors.OutputError` whose one line names the path and the reason, e.g.
`--workdir /mnt/ro/run: cannot create files in /mnt/ro: Read-only file system`.
"""
import contextlib
import os
import tempfile
from typing import Iterator

from cpm_jax import errors


def directory_problem(path: str, subject: bool = True) -> str | None:
    """Why results cannot be written into directory `path` (made if missing), or None. The reason
    names the directory that is in the way, or calls it "it" when `subject` and it is `path`."""
    absolute = os.path.abspath(path)
    existing = absolute
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    itself = subject and existing == absolute
    if not os.path.isdir(existing):
        return "is a file, not a directory" if itself else f"{existing} is a file, not a directory"
    try:
        handle, probe = tempfile.mkstemp(prefix=".cpm_jax_write_check_", dir=existing)
    except OSError as error:
        return f"cannot create files in {'it' if itself else existing}: {error.strerror or error}"
    os.close(handle)
    os.remove(probe)
    return None


def _fail(label: str, path: str, problem: str, fix: str) -> None:
    raise errors.OutputError(f"{label + ' ' if label else ''}{path}: {problem}" + (f"; {fix}" if fix else ""))


def check_directory(path: str, label: str = "", fix: str = "") -> None:
    """OutputError `<label> <path>: <reason>[; <fix>]` unless results can be written into `path`."""
    problem = directory_problem(path)
    if problem:
        _fail(label, path, problem, fix)


def check_file(path: str, label: str = "", fix: str = "") -> None:
    """As check_directory, for one output file: an existing file must open for writing (it is not
    changed), a missing one must be creatable in its directory."""
    if os.path.isdir(path):
        _fail(label, path, "is a directory, not a file", fix)
    if os.path.exists(path):
        try:
            with open(path, "ab"):
                return
        except OSError as error:
            _fail(label, path, f"cannot be written: {error.strerror or error}", fix)
    problem = directory_problem(os.path.dirname(os.path.abspath(path)), subject=False)
    if problem:
        _fail(label, path, problem, fix)


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns an OSError while writing `path` (a full disk, a vanished mount) into an OutputError
    `cannot write <path>: <reason>`."""
    try:
        yield
    except errors.UserError:
        raise
    except OSError as error:
        raise errors.OutputError(f"cannot write {path}: {error.strerror or error}") from error
