"""Prediction files: the authors' release, MPII's exchange arrays, and this project's own file.

Every reader returns (N, P, 2) float64 predictions in 0-based pixels of the original images, in
the PROJECT's joint order for the benchmark (skeleton.LSP's 14 joints for `lsp` and `mpii`,
skeleton.FLIC's 9 parts for `flic`). Formats (`detect_format`; docs/paper_notes.md section 7):

  project       .npz with `format` = FORMAT_TAG (FORMAT_VERSION; `write`): `joints` N x P x 2 in
                its dataset's project order (names in `joint_names`), 0-based pixels
  release-lsp   .mat, `prediction_all` 14 x 2 x N (N = 1000: test images 1001..2000), LSP order
  release-flic  .mat, `prediction_all` 9 x 2 x N (N = 1016: istest, file order), FLIC's 9 parts
  mpii-h5       .h5 / .hdf5, dataset `preds` N x 16 x 2 (as Stacked Hourglass writes)
  mpii-npy      .npy, N x 16 x 2
  mpii-mat      .mat (v5 or v7.3), variable `preds` N x 16 x 2 (MATLAB's dimension order)

All but `project` hold 1-based MATLAB pixels (the top-left pixel's centre is (1, 1), as in the
official annotations; 1 is subtracted on reading). The mpii formats are in MPII id order (0 r
ankle ... 15 l wrist; `MPII_IDS` maps them to the project order); pelvis and thorax are dropped on
reading (and written as the hips' and shoulders' midpoints by `export`).

Rows are examples in the order of the scored annotations: LSP test images 1001..2000, FLIC's
istest examples in file order, MPII people as the annotation file or split lists them; the
project file also stores `index`, each row's 0-based example in its split. Errors are
PredictionFileError (a ValueError) whose message starts with the file's path: an unreadable file,
an unknown format, a wrong shape, NaN or infinite coordinates, a count that does not match the
annotations, a project file for another dataset or joint order.
"""
import dataclasses
import os
from typing import Any

import numpy as np
import scipy.io

from cpm_jax.errors import DataError, PredictionFileError
from data_pipelines import matfile, registry, skeleton
from data_pipelines.mpii import MPII_IDS, NUM_MPII_JOINTS

BENCHMARKS = ("lsp", "flic", "mpii")    # what prediction files are scored as (`evaluate score`)

FORMAT_TAG = "cpm_jax.predictions"
FORMAT_VERSION = 1
FORMATS = ("project", "release-lsp", "release-flic", "mpii-h5", "mpii-npy", "mpii-mat")
# The benchmark (and joint order) each format can hold.
FORMAT_BENCHMARKS = {"release-lsp": ("lsp",), "release-flic": ("flic",), "mpii-h5": ("mpii",),
                     "mpii-npy": ("mpii",), "mpii-mat": ("mpii",), "project": ("lsp", "flic", "mpii")}
RELEASE_VARIABLE = "prediction_all"
MPII_VARIABLE = "preds"
_RELEASE_PARTS = {"release-lsp": 14, "release-flic": 9}


def _joint_order(benchmark: str) -> skeleton.Skeleton:
    from cpm_jax.evaluation import metrics
    return metrics.BENCHMARKS[benchmark].joints


@dataclasses.dataclass(frozen=True)
class Predictions:
    joints: np.ndarray                  # (N, P, 2) float64, 0-based pixels, project order
    format: str
    path: str
    index: np.ndarray | None = None     # (N,) int64 example of the split (project files)
    peak: np.ndarray | None = None      # (N, P) peak beliefs (project files, optional)
    info: dict = dataclasses.field(default_factory=dict)  # dataset, split, stage, ... (project)

    def __len__(self) -> int:
        return len(self.joints)


def _fail(path: str, message: str) -> PredictionFileError:
    return PredictionFileError(f"{path}: {message}")


# ---------------------------------------------------------------------------------------- project

def write(path: str, joints: np.ndarray, dataset: str, split: str, stage: int,
          index: np.ndarray | None = None, peak: np.ndarray | None = None,
          joint_names: tuple[str, ...] | None = None, **info: str) -> str:
    """Writes this project's prediction file (.npz, uncompressed, no pickles):

      format      FORMAT_TAG            version  FORMAT_VERSION
      dataset     registry name (lsp, lsp+lspet, mpii, flic, ...)
      split       the split predicted (test, valid, ...)
      stage       the 1-based stage whose output `joints` is
      joint_names (P,) the order of `joints` (default: the dataset's skeleton)
      joints      (N, P, 2) float64, 0-based pixels in the original images
      index       (N,) int64, each row's 0-based example in the split (default 0..N-1)
      peak        (N, P) float32 peak beliefs, optional
      info_<key>  any further strings given as keyword arguments (e.g. config, checkpoint)
    `path` gets the extension .npz if it has none; returns the path written."""
    joints = np.asarray(joints, np.float64)
    if joints.ndim != 3 or joints.shape[-1] != 2:
        raise PredictionFileError(f"{path}: joints {joints.shape} must be (N, P, 2)")
    if not np.isfinite(joints).all():
        raise PredictionFileError(f"{path}: joints hold NaN or infinite values")
    n, p = joints.shape[:2]
    if joint_names is None:
        joint_names = registry.get(dataset).skeleton.joint_names
    if len(joint_names) != p:
        raise PredictionFileError(f"{path}: {p} joints but {len(joint_names)} joint names")
    index = np.arange(n) if index is None else np.asarray(index, np.int64)
    if index.shape != (n,):
        raise PredictionFileError(f"{path}: index {index.shape} must be (N,) = ({n},)")
    arrays = {"format": np.str_(FORMAT_TAG), "version": np.int64(FORMAT_VERSION),
              "dataset": np.str_(dataset), "split": np.str_(split), "stage": np.int64(stage),
              "joint_names": np.array(joint_names, dtype=str), "joints": joints, "index": index}
    if peak is not None:
        peak = np.asarray(peak, np.float32)
        if peak.shape != (n, p):
            raise PredictionFileError(f"{path}: peak {peak.shape} must be (N, P) = ({n}, {p})")
        arrays["peak"] = peak
    arrays.update({f"info_{k}": np.str_(v) for k, v in info.items()})
    if not os.path.splitext(path)[1]:
        path += ".npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _read_project(path: str, benchmark: str) -> Predictions:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise _fail(path, f"cannot read as a .npz file: {error}") from error
    tag = str(arrays["format"]) if "format" in arrays else None
    if tag != FORMAT_TAG:
        raise _fail(path, f"not a {FORMAT_TAG} file (format = {tag!r}; keys: {', '.join(arrays)})")
    version = int(arrays.get("version", -1))
    if version != FORMAT_VERSION:
        raise _fail(path, f"format version {version}; this reader knows version {FORMAT_VERSION}")
    for key in ("dataset", "split", "stage", "joint_names", "joints", "index"):
        if key not in arrays:
            raise _fail(path, f"no '{key}' (keys: {', '.join(arrays)})")
    dataset = str(arrays["dataset"])
    if dataset not in registry.DATASETS or registry.get(dataset).benchmark != benchmark:
        raise _fail(path, f"holds predictions for dataset {dataset!r}, which is not scored as {benchmark}")
    names = tuple(str(n) for n in arrays["joint_names"])
    expected = _joint_order(benchmark).joint_names
    if names != expected:
        raise _fail(path, f"joint order {names} is not the project's {benchmark} order {expected}")
    joints = _numeric(path, arrays["joints"], "joints")
    if joints.ndim != 3 or joints.shape[1:] != (len(expected), 2):
        raise _fail(path, f"'joints' has shape {joints.shape}; expected N x {len(expected)} x 2")
    _check_finite(path, joints, expected)
    index = np.asarray(arrays["index"])
    if index.shape != (len(joints),) or not np.issubdtype(index.dtype, np.integer):
        raise _fail(path, f"'index' {index.shape} {index.dtype} must be {len(joints)} integers")
    peak = arrays.get("peak")
    info = {"dataset": dataset, "split": str(arrays["split"]), "stage": int(arrays["stage"]),
            "version": version}
    info.update({k[5:]: str(v) for k, v in arrays.items() if k.startswith("info_")})
    return Predictions(joints, "project", path, index.astype(np.int64), peak, info)


# ----------------------------------------------------------------------------- foreign formats

def _numeric(path: str, value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or \
            np.issubdtype(array.dtype, np.complexfloating):
        raise _fail(path, f"'{name}' holds {array.dtype}, not real numbers")
    return array.astype(np.float64)


def _check_finite(path: str, joints: np.ndarray, names: tuple[str, ...]) -> None:
    """NaN or infinite coordinates are an error; `names`: the joints of a row (project order)."""
    bad = ~np.isfinite(joints).all(-1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise _fail(path, f"{bad.sum()} predicted joints are NaN or infinite (the first: row {i + 1} "
                          f"of {len(joints)}, {names[j]})")


def _load_mat(path: str) -> dict:
    """The variables of a MATLAB file (`matfile.load`: v4-v7 via scipy, v7.3 via h5py, arrays in
    MATLAB's dimension order); its DataError becomes a PredictionFileError with the same message."""
    try:
        return matfile.load(path)
    except DataError as error:
        raise PredictionFileError(str(error)) from error


def _load_h5(path: str) -> dict:
    """The datasets of a plain HDF5 file as stored (written from numpy, N x 16 x 2: not transposed,
    unlike a MATLAB v7.3 .mat, which `_load_mat` reads)."""
    try:
        matfile.require_file(path, "an HDF5 file")
    except DataError as error:
        raise PredictionFileError(str(error)) from error
    try:
        import h5py
    except ImportError as error:
        raise _fail(path, "reading HDF5 needs h5py (pip install h5py)") from error
    try:
        with h5py.File(path, "r") as f:
            return {k: np.asarray(v) for k, v in f.items() if isinstance(v, h5py.Dataset)}
    except OSError as error:
        raise _fail(path, f"cannot read as an HDF5 file: {error}") from error


def _load_npy(path: str) -> dict:
    try:
        return {"array": np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as error:
        raise _fail(path, f"cannot read as a .npy file: {error}") from error


def _release(path: str, arrays: dict, fmt: str) -> np.ndarray:
    if RELEASE_VARIABLE not in arrays:
        raise _fail(path, f"no variable '{RELEASE_VARIABLE}' (found: {', '.join(arrays) or 'nothing'})")
    parts = _RELEASE_PARTS[fmt]
    array = _numeric(path, arrays[RELEASE_VARIABLE], RELEASE_VARIABLE)
    if array.ndim == 2 and array.shape == (parts, 2):       # one example, squeezed by MATLAB
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[:2] != (parts, 2):
        raise _fail(path, f"'{RELEASE_VARIABLE}' has shape {' x '.join(map(str, array.shape))}; "
                          f"{fmt} is {parts} x 2 x N")
    joints = array.transpose(2, 0, 1) - 1.0
    _check_finite(path, joints, _joint_order(FORMAT_BENCHMARKS[fmt][0]).joint_names)
    return joints


def _mpii(path: str, array: np.ndarray, name: str) -> np.ndarray:
    array = _numeric(path, array, name)
    if array.ndim == 2 and array.shape == (NUM_MPII_JOINTS, 2):
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (NUM_MPII_JOINTS, 2):
        raise _fail(path, f"'{name}' has shape {' x '.join(map(str, array.shape))}; MPII predictions "
                          f"are N x {NUM_MPII_JOINTS} x 2 (MPII id order)")
    joints = array[:, list(MPII_IDS)] - 1.0       # pelvis and thorax dropped
    _check_finite(path, joints, skeleton.LSP.joint_names)
    return joints


def detect_format(path: str) -> str:
    """The format of `path` from its extension and contents (see the table)."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise _fail(path, "no such file")
    if ext == ".npz":
        return "project"
    if ext in (".h5", ".hdf5"):
        return "mpii-h5"
    if ext == ".npy":
        return "mpii-npy"
    if ext == ".mat":
        arrays = _load_mat(path)
        if RELEASE_VARIABLE in arrays:
            shape = np.shape(arrays[RELEASE_VARIABLE])
            for fmt, parts in _RELEASE_PARTS.items():
                if len(shape) >= 2 and shape[0] == parts and shape[1] == 2:
                    return fmt
            raise _fail(path, f"'{RELEASE_VARIABLE}' has shape {' x '.join(map(str, shape))}; the "
                              "release's files are 14 x 2 x N (LSP) or 9 x 2 x N (FLIC)")
        if MPII_VARIABLE in arrays:
            return "mpii-mat"
        raise _fail(path, f"unknown prediction format: a .mat without '{RELEASE_VARIABLE}' or "
                          f"'{MPII_VARIABLE}' (found: {', '.join(arrays) or 'nothing'})")
    raise _fail(path, f"unknown prediction format (extension {ext or 'none'!r}); known: .npz "
                      "(project), .mat (release prediction_all, or MPII preds), .h5/.hdf5 and .npy "
                      "(MPII N x 16 x 2); or name one with a format option: " + ", ".join(FORMATS))


def read(path: str, benchmark: str, fmt: str | None = None,
         expected_count: int | None = None) -> Predictions:
    """Predictions for `benchmark` (lsp, flic, mpii) from `path`, in `fmt` (None: detected).
    `expected_count`: the number of scored examples; another count is an error."""
    path = os.fspath(path)
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if fmt in (None, "auto"):
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise _fail(path, f"unknown prediction format {fmt!r}; known: {', '.join(FORMATS)}")
    elif not os.path.exists(path):
        raise _fail(path, "no such file")
    if benchmark not in FORMAT_BENCHMARKS[fmt]:
        raise _fail(path, f"is a {fmt} file, which holds {' or '.join(FORMAT_BENCHMARKS[fmt])} "
                          f"predictions, not {benchmark}")
    if fmt == "project":
        predictions = _read_project(path, benchmark)
    else:
        if fmt in _RELEASE_PARTS:
            joints = _release(path, _load_mat(path), fmt)
        elif fmt == "mpii-npy":
            joints = _mpii(path, _load_npy(path)["array"], "array")
        else:
            arrays = _load_h5(path) if fmt == "mpii-h5" else _load_mat(path)
            if MPII_VARIABLE not in arrays:
                raise _fail(path, f"no {'dataset' if fmt == 'mpii-h5' else 'variable'} "
                                  f"'{MPII_VARIABLE}' (found: {', '.join(arrays) or 'nothing'})")
            joints = _mpii(path, arrays[MPII_VARIABLE], MPII_VARIABLE)
        predictions = Predictions(joints, fmt, path)
    if expected_count is not None and len(predictions) != expected_count:
        raise _fail(path, f"holds {len(predictions)} predictions; the annotations have "
                          f"{expected_count} examples to score")
    return predictions


def export(path: str, joints: np.ndarray, fmt: str) -> str:
    """Writes project-order 0-based (N, P, 2) `joints` as a foreign format (not `project`: use
    `write`): release-lsp / release-flic (P = 14 / 9), or an MPII N x 16 x 2 file whose pelvis and
    thorax are the midpoints of the hips and of the shoulders. Returns `path`."""
    joints = np.asarray(joints, np.float64)
    if fmt in _RELEASE_PARTS:
        parts = _RELEASE_PARTS[fmt]
        if joints.ndim != 3 or joints.shape[1:] != (parts, 2):
            raise PredictionFileError(f"{path}: {fmt} needs (N, {parts}, 2) joints, got {joints.shape}")
        scipy.io.savemat(path, {RELEASE_VARIABLE: (joints + 1.0).transpose(1, 2, 0)})
        return path
    if fmt not in ("mpii-h5", "mpii-npy", "mpii-mat"):
        raise PredictionFileError(f"{path}: cannot export as {fmt!r}; known: {', '.join(FORMATS[1:])}")
    if joints.ndim != 3 or joints.shape[1:] != (skeleton.LSP.num_joints, 2):
        raise PredictionFileError(f"{path}: {fmt} needs (N, 14, 2) joints in the LSP order, got {joints.shape}")
    out = np.zeros((len(joints), NUM_MPII_JOINTS, 2))
    out[:, list(MPII_IDS)] = joints + 1.0
    i = skeleton.LSP.index
    out[:, 6] = (out[:, MPII_IDS[i["r_hip"]]] + out[:, MPII_IDS[i["l_hip"]]]) / 2
    out[:, 7] = (out[:, MPII_IDS[i["r_shoulder"]]] + out[:, MPII_IDS[i["l_shoulder"]]]) / 2
    if fmt == "mpii-npy":
        with open(path, "wb") as f:
            np.save(f, out)
    elif fmt == "mpii-mat":
        scipy.io.savemat(path, {MPII_VARIABLE: out})
    else:
        import h5py
        with h5py.File(path, "w") as f:
            f.create_dataset(MPII_VARIABLE, data=out)
    return path
