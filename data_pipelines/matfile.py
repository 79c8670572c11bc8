"""Reading MATLAB structs as scipy.io.loadmat(..., struct_as_record=False, squeeze_me=True) returns
them: helpers shared by the MPII and FLIC readers. Errors are BadExampleError naming `where`."""
from typing import Any

import numpy as np
import scipy.io

from data_pipelines.records import BadExampleError

# What scipy.io.loadmat raises for a missing, truncated or foreign file.
MAT_ERRORS = (OSError, ValueError, TypeError, NotImplementedError, AssertionError, IndexError,
              KeyError, scipy.io.matlab.MatReadError)


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


def field(struct: Any, name: str, where: str) -> Any:
    """struct.name, or BadExampleError naming `where`."""
    if not hasattr(struct, "_fieldnames"):
        raise BadExampleError(f"{where}: expected a MATLAB struct with field '{name}', "
                              f"found {type(struct).__name__}")
    if name not in struct._fieldnames:
        raise BadExampleError(f"{where}: no field '{name}' (found: {', '.join(struct._fieldnames)})")
    return getattr(struct, name)


def number(value: Any, where: str) -> float:
    array = np.asarray(value)
    if array.size != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise BadExampleError(f"{where}: expected a number, found {value!r}")
    return float(array.reshape(()))
