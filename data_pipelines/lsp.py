"""LSP and LSP Extended readers (reference section 7) with the release's centre and scale.

Both ship `joints.mat` with one variable `joints`, told apart by shape, not by file name:
  LSP    3 x 14 x N (x, y, flag), flag 1 = occluded;   images/im0001.jpg ...; 1-1000 train, 1001-2000 test
  LSPET  14 x 3 x N (x, y, flag), flag 1 = visible;    images/im00001.jpg ...; all train
Coordinates are 1-based MATLAB pixels; records are 0-based. Every LSP joint is labelled
(visibility 2 visible, 1 occluded). LSPET's flag-0 joints carry no position: all 16,787 of them
sit on the x = 0 or y = 0 axis outside the image, a placeholder, so they are not labelled
(visibility 0); its labelled joints of truncated people may lie outside the image (20 do).

Centre and scale follow the release's genJSON.m: LSP images are tight crops, so the centre is
the image centre; LSPET's is the middle of the visible joints' bounding box. The scale is
`mpi_like_scale`, computed over the samples read together (LSPET + LSP 1-1000 for `lsp+lspet`).
"""
import os
import warnings

import numpy as np
import scipy.io
from PIL import Image

from data_pipelines import matfile, records, skeleton
from data_pipelines.records import BadExampleError

LSP_TRAIN = range(0, 1000)     # 0-based sample indices
LSP_TEST = range(1000, 2000)

# genJSON.m's limbs (child, parent) in LSP order, among them its reference limb neck -> head
# top. The left limbs pair hip<->knee and elbow<->shoulder and hang ankle and wrist off the
# neck; kept as released, since they define the scales the released models were trained at.
_LIMBS = tuple((skeleton.JOINT_INDEX[a], skeleton.JOINT_INDEX[b]) for a, b in (
    ("r_ankle", "r_knee"), ("r_knee", "r_hip"), ("r_hip", "neck"),
    ("l_hip", "l_knee"), ("l_knee", "l_hip"), ("l_ankle", "neck"), ("neck", "head_top"),
    ("r_wrist", "r_elbow"), ("r_elbow", "r_shoulder"), ("r_shoulder", "neck"),
    ("l_shoulder", "l_elbow"), ("l_elbow", "l_shoulder"), ("l_wrist", "neck")))
_REFERENCE_LIMB = 6
_TARGET_DIST = 41.0 / 35.0      # the release's target_dist
_BOX, _MARGIN = 368, 64         # the squeeze: visible joints fit in 368 - 64 px


def read_joints(path: str) -> tuple[str, np.ndarray]:
    """(layout, joints (N, 14, 3)) from an LSP or LSPET `joints.mat`; layout 'lsp' or 'lspet'."""
    try:
        mat = scipy.io.loadmat(path)
    except matfile.MAT_ERRORS as error:
        raise BadExampleError(f"{path}: cannot read as a MATLAB file: {error}") from error
    if "joints" not in mat:
        raise BadExampleError(f"{path}: no variable 'joints' (found: {', '.join(k for k in mat if not k.startswith('__'))})")
    joints = np.asarray(mat["joints"], np.float64)
    if joints.ndim == 3 and joints.shape[:2] == (3, 14):
        return "lsp", joints.transpose(2, 1, 0)
    if joints.ndim == 3 and joints.shape[:2] == (14, 3):
        return "lspet", joints.transpose(2, 0, 1)
    raise BadExampleError(f"{path}: 'joints' has shape {joints.shape}; expected 3 x 14 x N (LSP) "
                          "or 14 x 3 x N (LSP Extended)")


def mpi_like_scale(joints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The release's `insertMPILikeScale`: (N,) person scale in MPII units (height / 200 px).

    joints (N, 14, 2) pixels, visible (N, 14) bool. Each limb's length is divided by its median
    ratio to the neck-head limb (over the samples where both are visible); the 75th percentile
    (MATLAB's quantile) of a sample's visible normalised limbs, / 35, is its scale, enlarged
    where needed so that its visible joints span at most 368 - 64 px at the canonical zoom."""
    child, parent = np.array(_LIMBS).T
    length = np.linalg.norm(joints[:, child] - joints[:, parent], axis=-1)       # (N, 13)
    limb_visible = visible[:, child] & visible[:, parent]
    ratios = np.full(len(_LIMBS), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        for p in range(len(_LIMBS)):
            both = limb_visible[:, p] & limb_visible[:, _REFERENCE_LIMB]
            r = length[both, p] / length[both, _REFERENCE_LIMB]
            r = r[~np.isnan(r)]
            ratios[p] = np.median(r) if r.size else np.nan
        normalised = length / ratios
    scales = np.empty(len(joints))
    for i in range(len(joints)):
        seen = normalised[i, limb_visible[i]]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: no usable limb
            # MATLAB's quantile: NaN limbs (no median ratio) dropped, positions (i - 0.5) / n.
            zoom = _TARGET_DIST / (np.nanquantile(seen, 0.75, method="hazen") / 35.0) if seen.size else np.nan
        points = joints[i, visible[i]]
        with np.errstate(divide="ignore"):
            bound = (_BOX - _MARGIN) / np.ptp(points, axis=0).max() if len(points) else np.nan
        zoom = np.fmin(zoom, bound)  # MATLAB's min ignores NaN
        scales[i] = _TARGET_DIST / zoom
    return scales


def _image_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise BadExampleError(f"{path}: cannot read the image size: {error}") from error


def read(root: str, split: str, name: str | None = None) -> records.Annotations:
    """One split of an LSP or LSPET directory (`joints.mat`, `images/`), scaled by itself."""
    return read_many([(root, split)], name)


def read_many(parts: list[tuple[str, str]], name: str | None = None) -> records.Annotations:
    """Several (root, split) parts read together, as genJSON.m did for LSPET + LSP 1-1000:
    the limb ratios of `mpi_like_scale` are shared."""
    rows = []
    for root, split in parts:
        layout, joints = read_joints(os.path.join(root, "joints.mat"))
        if layout == "lsp":
            chosen = {"train": LSP_TRAIN, "test": LSP_TEST}.get(split)
            if chosen is None:
                raise ValueError(f"LSP ({root}): unknown split {split!r}; known: train, test")
            if len(joints) < chosen.stop:
                raise BadExampleError(f"{root}/joints.mat: {len(joints)} samples; LSP has 2000")
            indices = np.array(chosen)
            visible = joints[indices, :, 2] == 0
            names = [f"images/im{i + 1:04d}.jpg" for i in indices]
        else:
            if split != "train":
                raise ValueError(f"LSP Extended ({root}): unknown split {split!r}; it has only 'train'")
            indices = np.arange(len(joints))
            visible = joints[:, :, 2] == 1
            names = [f"images/im{i + 1:05d}.jpg" for i in indices]
        visibility = np.where(visible, 2, 1 if layout == "lsp" else 0)
        rows.append((layout, root, names, joints[indices, :, :2] - 1.0, visible, visibility))

    scale = mpi_like_scale(np.concatenate([r[3] for r in rows]), np.concatenate([r[4] for r in rows]))
    tables, start = [], 0
    for layout, root, names, joints, visible, visibility in rows:
        paths = [os.path.join(root, n) for n in names]
        if layout == "lsp":
            center = (np.array([_image_size(p) for p in paths], np.float64) - 1.0) / 2.0
        else:
            with np.errstate(invalid="ignore"):
                shown = np.where(visible[..., None], joints, np.nan)
                center = (np.nanmin(shown, axis=1) + np.nanmax(shown, axis=1)) / 2.0
        n = len(names)
        tables.append(records.make(name or layout, paths, joints, visibility, center,
                                   200.0 * scale[start:start + n]))
        start += n
    return tables[0] if len(tables) == 1 else records.concatenate(name or "lsp+lspet", tables)
