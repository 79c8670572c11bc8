"""MATLAB .mat files: the one loader (`load`, `variables`) and helpers for the structs it returns.

`load(path)` reads every variable of a MATLAB file: v4 to v7 through scipy.io.loadmat, v7.3
(HDF5) through h5py. Arrays always come in MATLAB's dimension order (a MATLAB 3 x 14 x N array
is numpy shape (3, 14, N) whichever the version: h5py sees v7.3 arrays reversed, so they are
transposed here). `structs=True` reads structs as scipy.io.loadmat(..., struct_as_record=False,
squeeze_me=True) returns them (attribute access, 1-element arrays squeezed), as the MPII and FLIC
readers need; structs are read from v4-v7 files only (a v7.3 file must be saved again with
`-v7`). v7.3 files give their numeric and char variables; structs and cells are left out.

Every failure is a `DataError` whose message starts with the path: "no such file", "is a
directory, not a MATLAB .mat file", "not a MATLAB .mat file (it begins b'...')", "a damaged
MATLAB .mat file (...)". Callers that report another error class (prediction files) wrap it.

The struct helpers (`as_list`, `is_empty`, `field`, `number`) raise DataError naming `where`
(the file and the element, in MATLAB's 1-based notation).
"""
import os
import struct
import zlib
from typing import Any, Callable

import numpy as np
import scipy.io

from cpm_jax.errors import DataError

MAT_FILE = "a MATLAB .mat file"
# What scipy.io.loadmat raises for a truncated or foreign file.
_SCIPY_ERRORS = (OSError, ValueError, TypeError, AssertionError, IndexError, KeyError, EOFError,
                 struct.error, zlib.error, UnicodeDecodeError, scipy.io.matlab.MatReadError)
# The first bytes of files that get mistaken for annotation files or images.
_SIGNATURES = ((b"MATLAB", "a MATLAB .mat file"), (b"\xff\xd8\xff", "a JPEG image"),
               (b"\x89PNG", "a PNG image"), (b"\x89HDF", "an HDF5 file without a MATLAB header"),
               (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip archive"),
               (b"\x93NUMPY", "a numpy .npy file"))


def require_file(path: str, kind: str = MAT_FILE) -> None:
    """DataError unless `path` is an existing file: "<path>: no such file" (naming a missing
    parent directory) or "<path>: is a directory, not <kind>"."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, not {kind}")
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        missing = "" if os.path.isdir(parent) else f" (the directory {parent} does not exist)"
        raise DataError(f"{path}: no such file{missing}")


def describe_content(head: bytes) -> str:
    """What a file whose first bytes are `head` looks like, for messages: "an empty file",
    "a JPEG image", "text beginning '...'", ..."""
    if not head:
        return "an empty file"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    text = head[:40]
    if all(32 <= b < 127 or b in b"\t\r\n" for b in text):
        return f"text beginning {text.decode('ascii')!r}"
    return f"binary data beginning {head[:16]!r}"


def _unreadable(path: str, error: Exception) -> DataError:
    with open(path, "rb") as f:
        head = f.read(128)
    if head.startswith(b"MATLAB"):
        return DataError(f"{path}: a damaged MATLAB .mat file ({type(error).__name__}: {error})")
    return DataError(f"{path}: not a MATLAB .mat file (it is {describe_content(head)})")


def _read(path: str, with_scipy: Callable[[str], Any], with_h5py: Callable[[Any], Any]):
    path = os.fspath(path)
    require_file(path)
    try:
        return with_scipy(path)
    except NotImplementedError:         # scipy: "Please use HDF reader for matlab v7.3 files"
        pass
    except PermissionError as error:
        raise DataError(f"{path}: cannot be read: {error.strerror}") from error
    except _SCIPY_ERRORS as error:
        raise _unreadable(path, error) from error
    try:
        import h5py
    except ImportError as error:
        raise DataError(f"{path}: a MATLAB v7.3 (HDF5) file; reading it needs h5py "
                        "(pip install h5py)") from error
    try:
        with h5py.File(path, "r") as f:
            return with_h5py(f)
    except OSError as error:
        raise DataError(f"{path}: a damaged MATLAB v7.3 (HDF5) file (h5py: {error})") from error


def _hdf5_variable(item) -> Any:
    """A v7.3 variable as loadmat gives it, in MATLAB's dimension order; None for structs and
    cells (groups, object references)."""
    import h5py
    if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "biuf":
        return None
    matlab_class = item.attrs.get("MATLAB_class", b"")
    matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
    if item.attrs.get("MATLAB_empty", 0):
        return np.zeros((0, 0))
    value = np.asarray(item).T             # h5py: the reverse of MATLAB's dimension order
    if matlab_class == "char":             # as loadmat: one string per row
        rows = value.reshape(value.shape[0], -1) if value.ndim else value.reshape(1, 1)
        return np.array(["".join(map(chr, row)) for row in rows])
    return value


def load(path: str, structs: bool = False) -> dict[str, Any]:
    """The variables of the MATLAB file `path` (name -> value; no `__header__` and the like),
    arrays in MATLAB's dimension order. `structs`: read structs as objects with attributes,
    1-element arrays squeezed (v4-v7 files only). DataError naming the file if it cannot be read."""
    def with_scipy(p):
        mat = scipy.io.loadmat(p, struct_as_record=False, squeeze_me=True) if structs else scipy.io.loadmat(p)
        return {k: v for k, v in mat.items() if not k.startswith("__")}

    def with_h5py(f):
        if structs:
            raise DataError(f"{path}: a MATLAB v7.3 (HDF5) file, whose structs are not read here; "
                            "save it again in MATLAB as v7: save(FILE, VARIABLES, '-v7')")
        values = {name: _hdf5_variable(item) for name, item in f.items() if not name.startswith("#")}
        return {k: v for k, v in values.items() if v is not None}

    return _read(path, with_scipy, with_h5py)


def variables(path: str) -> list[str]:
    """The names of the variables in the MATLAB file `path`, without loading them (any version)."""
    return _read(path, lambda p: [name for name, _, _ in scipy.io.whosmat(p)],
                 lambda f: [name for name in f if not name.startswith("#")])


def missing_variable(path: str, name: str, found) -> DataError:
    """"<path>: no variable '<name>' (found: a, b)" as a DataError."""
    found = [k for k in found if not k.startswith("__")]
    return DataError(f"{path}: no variable '{name}' (found: {', '.join(found) or 'nothing'})")


def as_list(value: Any) -> list:
    """A MATLAB struct array as loaded with squeeze_me: a single struct -> [it]; an array ->
    its elements; empty ([] or a 0-element array) or None -> []."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.ravel()) if value.dtype == object else ([] if value.size == 0 else [value])
    return [value]


def is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, np.ndarray) and value.size == 0) or \
        (isinstance(value, str) and value == "")


def is_struct(value: Any) -> bool:
    return hasattr(value, "_fieldnames")


def has_field(struct_: Any, name: str) -> bool:
    return is_struct(struct_) and name in struct_._fieldnames


def field(struct_: Any, name: str, where: str) -> Any:
    """struct.name, or DataError naming `where`."""
    if not is_struct(struct_):
        raise DataError(f"{where}: expected a MATLAB struct with field '{name}', "
                        f"found {type(struct_).__name__}")
    if name not in struct_._fieldnames:
        raise DataError(f"{where}: no field '{name}' (found: {', '.join(struct_._fieldnames)})")
    return getattr(struct_, name)


def number(value: Any, where: str) -> float:
    array = np.asarray(value)
    if array.size != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{where}: expected a number, found {value!r}")
    return float(array.reshape(()))
