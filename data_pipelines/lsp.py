"""LSP and LSP Extended readers (docs/paper_notes.md section 7) with the release's centre and scale.

Both ship `joints.mat` with one variable `joints`, of different layouts (`read_joints` tells them
apart by shape; a reader asked for one layout rejects the other, naming the file):
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

import numpy as np
from PIL import Image

from cpm_jax.errors import DataError
from data_pipelines import matfile, records, skeleton

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


# The two layouts of `joints.mat` (see the module docstring): dataset name, shape.
LAYOUTS = {"lsp": ("LSP", "3 x 14 x N"), "lspet": ("LSP Extended", "14 x 3 x N")}
# What to do when a reader meets the other layout (training configs; other callers pass theirs).
_FIX = {"lsp": "set data.dataset=lspet, or point data.paths.lsp at the LSP folder (lsp_dataset, "
               "3 x 14 x 2000)",
        "lspet": "set data.dataset=lsp, or point data.paths.lspet at the LSP Extended folder "
                 "(lspet_dataset, 14 x 3 x 10000)"}


def read_joints(path: str, layout: str | None = None, fix: str | None = None) -> tuple[str, np.ndarray]:
    """(layout, joints (N, 14, 3)) from an LSP or LSPET `joints.mat`; layout 'lsp' or 'lspet',
    told by shape. With `layout`, a file of the other layout is a DataError naming the file, the
    shape found, the layout expected and `fix` (default: the config keys to change)."""
    mat = matfile.load(path)
    if "joints" not in mat:
        raise matfile.missing_variable(path, "joints", mat)
    joints = np.asarray(mat["joints"])
    if not np.issubdtype(joints.dtype, np.number):
        raise DataError(f"{path}: 'joints' holds {joints.dtype}, not numbers")
    joints = joints.astype(np.float64)
    shape = " x ".join(map(str, joints.shape))
    if joints.ndim == 3 and joints.shape[:2] == (3, 14):
        found, joints = "lsp", joints.transpose(2, 1, 0)
    elif joints.ndim == 3 and joints.shape[:2] == (14, 3):
        found, joints = "lspet", joints.transpose(2, 0, 1)
    else:
        raise DataError(f"{path}: 'joints' has shape {shape}; expected {LAYOUTS['lsp'][1]} (LSP) "
                        f"or {LAYOUTS['lspet'][1]} (LSP Extended)")
    if layout is not None and found != layout:
        raise DataError(f"{path}: 'joints' is {shape}, the {LAYOUTS[found][0]} layout "
                        f"({LAYOUTS[found][1]}); expected the {LAYOUTS[layout][0]} layout "
                        f"({LAYOUTS[layout][1]}): {fix or _FIX[layout]}")
    return found, joints


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
        # MATLAB's quantile: NaN limbs (no median ratio) dropped, positions (i - 0.5) / n.
        seen = seen[~np.isnan(seen)]
        with np.errstate(divide="ignore", invalid="ignore"):
            zoom = _TARGET_DIST / (np.quantile(seen, 0.75, method="hazen") / 35.0) if seen.size else np.nan
        points = joints[i, visible[i]]
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = (_BOX - _MARGIN) / np.ptp(points, axis=0).max() if len(points) else np.nan
        zoom = np.fmin(zoom, bound)  # MATLAB's min ignores NaN
        scales[i] = _TARGET_DIST / zoom
    return scales


def _image_size(path: str) -> tuple[float, float]:
    """(width, height) of an image file; NaN where it cannot be read (the source then names the
    example as bad when it loads it, and skips it with data.skip_bad_examples)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return np.nan, np.nan


def _box_centre(joints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(N, 2) middle of each sample's visible joints' bounding box; NaN without one."""
    low = np.where(visible[..., None], joints, np.inf).min(axis=1)
    high = np.where(visible[..., None], joints, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore"):          # inf - inf where nothing is visible
        middle = (low + high) / 2.0
    return np.where(visible.any(axis=1)[:, None], middle, np.nan)


def read(root: str, layout: str, split: str, name: str | None = None,
         fix: str | None = None) -> records.Annotations:
    """One split of an LSP ('lsp') or LSPET ('lspet') directory (`joints.mat`, `images/`),
    scaled by itself. A `joints.mat` of the other layout is a DataError (see `read_many`)."""
    return read_many([(root, layout, split)], name, fix)


def read_many(parts: list[tuple[str, str, str]], name: str | None = None,
              fix: str | None = None) -> records.Annotations:
    """Several (root, layout, split) parts read together, as genJSON.m did for LSPET + LSP
    1-1000: the limb ratios of `mpi_like_scale` are shared. `fix`: what the message of a
    `joints.mat` of the wrong layout tells to do (default: the config keys)."""
    rows = []
    for root, layout, split in parts:
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}; known: {', '.join(LAYOUTS)}")
        if not os.path.isdir(root):
            raise DataError(f"{root}: no such directory (the {LAYOUTS[layout][0]} folder, "
                            "holding joints.mat and images/)")
        path = os.path.join(root, "joints.mat")
        _, joints = read_joints(path, layout, fix)
        if layout == "lsp":
            chosen = {"train": LSP_TRAIN, "test": LSP_TEST}.get(split)
            if chosen is None:
                raise DataError(f"LSP ({root}): unknown split {split!r}; known: train, test")
            if len(joints) < chosen.stop:
                raise DataError(f"{path}: {len(joints)} samples; LSP has 2000")
            indices = np.array(chosen)
            visible = joints[indices, :, 2] == 0
            names = [f"images/im{i + 1:04d}.jpg" for i in indices]
        else:
            if split != "train":
                raise DataError(f"LSP Extended ({root}): unknown split {split!r}; it has only 'train'")
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
            center = (np.array([_image_size(p) for p in paths], np.float64).reshape(-1, 2) - 1.0) / 2.0
        else:
            center = _box_centre(joints, visible)
        n = len(names)
        tables.append(records.make(name or layout, paths, joints, visibility, center,
                                   200.0 * scale[start:start + n]))
        start += n
    return tables[0] if len(tables) == 1 else records.concatenate(name or "lsp+lspet", tables)
