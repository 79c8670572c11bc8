"""FLIC reader (docs/paper_notes.md sections 5 and 7) following the release's genJSON.m ('FLIC').

`root` holds `examples.mat` and `images/`. Its variable `examples` (1 x 5003 structs) has
  coords     2 x 29, 1-based pixels, NaN where not annotated (annotated columns: 1 l shoulder,
             2 l elbow, 3 l wrist, 4 r shoulder, 5 r elbow, 6 r wrist, 7 l hip, 10 r hip,
             13 l eye, 14 r eye, 17 nose)
  filepath   the image file under images/;   torsobox [x1 y1 x2 y2];   istrain, istest
The release's FLIC model predicts 9 parts (JOINT_NAMES). As genJSON.m: the centre is
((x1 + x2) / 2, 0.7 y1 + 0.3 y2) of the torso box, the scale 0.0110 x torso height in MPII units
(records: 200 x that, in pixels); the other examples with the same `filepath` are the `others`.
FLIC's labels are observer-centric: for the `train` split, an example whose right shoulder lies
right of (x greater than) its left shoulder has its left and right parts swapped, as the release
did to keep labels consistent; `test` labels are kept exactly as in the file. A NaN part is not
labelled (visibility 0, coordinates 0); the others visible (2). FLIC has no head boxes (NaN).
Problems with the file are DataErrors naming it and the example in MATLAB's 1-based notation,
`examples(i)`.
"""
import dataclasses
import os
from typing import Any

import numpy as np

from cpm_jax.errors import DataError
from data_pipelines import matfile, records, skeleton

EXAMPLES_FILE = "examples.mat"
JOINT_NAMES = skeleton.FLIC.joint_names
NUM_JOINTS = skeleton.FLIC.num_joints
JOINT_INDEX = skeleton.FLIC.index
# Part j is column COORD_COLUMNS[j] (0-based) of `coords`: 1-based columns 1-7, 10, 17.
COORD_COLUMNS = (0, 1, 2, 3, 4, 5, 6, 9, 16)
NUM_COORD_COLUMNS = 29
FLIP_PERMUTATION = skeleton.FLIC.flip_permutation
TORSO_SCALE = 0.0110           # MPII-style scale per pixel of torso height
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
    filepath: str
    coords: np.ndarray       # (9, 2) 1-based, NaN where not annotated, file's labels
    torsobox: np.ndarray     # (4,) x1 y1 x2 y2, 1-based
    istrain: bool
    istest: bool


def _flag(value: Any, where: str) -> bool:
    return matfile.number(value, where) != 0


def _example(struct: Any, index: int, path: str) -> Example:
    where = f"{path}: examples({index + 1})"
    filepath = matfile.field(struct, "filepath", where)
    if not isinstance(filepath, str) or not filepath:
        raise DataError(f"{where}.filepath: expected a file name, found {filepath!r}")
    coords = np.asarray(matfile.field(struct, "coords", where))
    if coords.ndim != 2 or coords.shape[0] != 2 or coords.shape[1] <= max(COORD_COLUMNS) or \
            not np.issubdtype(coords.dtype, np.number):
        raise DataError(f"{where}.coords: expected 2 x {NUM_COORD_COLUMNS} numbers, "
                        f"found shape {coords.shape} ({coords.dtype})")
    box = np.asarray(matfile.field(struct, "torsobox", where))
    if box.size != 4 or not np.issubdtype(box.dtype, np.number):
        raise DataError(f"{where}.torsobox: expected [x1 y1 x2 y2], found {box!r}")
    return Example(filepath, coords[:, list(COORD_COLUMNS)].T.astype(np.float64),
                   box.astype(np.float64).ravel(),
                   _flag(matfile.field(struct, "istrain", where), f"{where}.istrain"),
                   _flag(matfile.field(struct, "istest", where), f"{where}.istest"))


def load_examples(path: str) -> list[Example]:
    """Every example of an `examples.mat`, in file order."""
    mat = matfile.load(path, structs=True)
    if "examples" not in mat:
        raise matfile.missing_variable(path, "examples", mat)
    return [_example(s, i, path) for i, s in enumerate(matfile.as_list(mat["examples"]))]


def labels(coords: np.ndarray, swap: bool) -> tuple[np.ndarray, np.ndarray]:
    """(joints (9, 2) 0-based, visibility (9,)) from 1-based `coords` (9, 2) with NaN parts;
    `swap` applies the release's train-time rule: left and right parts exchange where the right
    shoulder's x exceeds the left shoulder's (never where either is NaN)."""
    if swap and coords[JOINT_INDEX["r_shoulder"], 0] > coords[JOINT_INDEX["l_shoulder"], 0]:
        coords = coords[list(FLIP_PERMUTATION)]
    labelled = ~np.isnan(coords).any(axis=1)
    return np.where(labelled[:, None], coords - 1.0, 0.0), np.where(labelled, 2, 0).astype(np.int32)


def read(root: str, split: str, name: str = "flic") -> records.Annotations:
    """One split of FLIC: 'train' (istrain) or 'test' (istest, 1016 in the real file), in file
    order; image paths are `root/images/<filepath>`."""
    if split not in SPLITS:
        raise DataError(f"FLIC ({root}): unknown split {split!r}; known: {', '.join(SPLITS)}")
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory (the FLIC folder, holding {EXAMPLES_FILE} and images/)")
    examples = load_examples(os.path.join(root, EXAMPLES_FILE))
    swap = split == "train"
    chosen = [i for i, e in enumerate(examples) if (e.istrain if swap else e.istest)]

    by_file: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_file.setdefault(e.filepath, []).append(i)
    others = [[o for o in by_file[examples[i].filepath] if o != i] for i in chosen]
    n, k = len(chosen), max((len(o) for o in others), default=0)

    joints = np.zeros((n, NUM_JOINTS, 2))
    visibility = np.zeros((n, NUM_JOINTS), np.int32)
    center = np.zeros((n, 2))
    scale = np.zeros(n)
    others_joints = np.zeros((n, k, NUM_JOINTS, 2))
    others_visibility = np.zeros((n, k, NUM_JOINTS), np.int32)
    for row, i in enumerate(chosen):
        e = examples[i]
        joints[row], visibility[row] = labels(e.coords, swap)
        x1, y1, x2, y2 = e.torsobox
        center[row] = ((x1 + x2) / 2.0 - 1.0, 0.7 * y1 + 0.3 * y2 - 1.0)
        scale[row] = 200.0 * TORSO_SCALE * (y2 - y1)
        for m, o in enumerate(others[row]):
            others_joints[row, m], others_visibility[row, m] = labels(examples[o].coords, swap)
    return records.make(f"{name}/{split}", [os.path.join(root, "images", examples[i].filepath)
                                            for i in chosen],
                        joints, visibility, center, scale, others_joints, others_visibility)
