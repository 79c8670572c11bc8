"""The common record every dataset yields, and the checks every reader runs.

A split's labels are an `Annotations` table in numpy, one row per sample (one person):
  image_paths        (N,) image file of each sample (several samples may share an image)
  joints             (N, P, 2) float32 (x, y) pixels, 0-based, integers at pixel centres
  visibility         (N, P) int32, COCO convention: 0 not labelled, 1 labelled but occluded,
                     2 labelled and visible (only 0 means "no peak")
  center             (N, 2) float32 person centre, pixels
  scale              (N,) float32 person size, pixels: 200 x the release's MPII-style scale,
                     so that `data.person_height` x input size / scale is the canonical zoom
  others_joints      (N, K, P, 2) and others_visibility (N, K, P): the other annotated people
                     of the same image (MPII, FLIC), padded with visibility 0; K may be 0.
  head_boxes         (N, 4) float32 head box x1 y1 x2 y2, 0-based pixels (MPII's annorect
                     x1..y2 less 1), the PCKh normaliser; NaN where there is none (LSP, LSPET,
                     FLIC, synthetic, and MPII people without one)

Readers turn official files into this table with 0-based coordinates (MATLAB files are
1-based); `row(i)` is sample i as a record without its image (the fields above, singular:
`head_box` (4,)); `check_record` rejects what no pipeline can use, raising
`cpm_jax.errors.BadExampleError` naming the example.
"""
import dataclasses
from typing import Sequence

import numpy as np

from cpm_jax.errors import BadExampleError


@dataclasses.dataclass(frozen=True)
class Annotations:
    dataset: str                  # for messages, e.g. "lspet" or "mpii/train"
    image_paths: np.ndarray       # (N,) str
    joints: np.ndarray            # (N, P, 2) float32
    visibility: np.ndarray        # (N, P) int32
    center: np.ndarray            # (N, 2) float32
    scale: np.ndarray             # (N,) float32
    others_joints: np.ndarray     # (N, K, P, 2) float32
    others_visibility: np.ndarray  # (N, K, P) int32
    head_boxes: np.ndarray        # (N, 4) float32, NaN where absent

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_parts(self) -> int:
        return self.joints.shape[1]

    def take(self, indices) -> "Annotations":
        """The rows `indices`, in that order."""
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[indices]
                                            for f in dataclasses.fields(self) if f.name != "dataset"})

    def row(self, index: int) -> dict:
        """Sample `index` as a record without its image (see the module docstring)."""
        return {"joints": self.joints[index], "visibility": self.visibility[index],
                "center": self.center[index], "scale": self.scale[index],
                "others_joints": self.others_joints[index],
                "others_visibility": self.others_visibility[index],
                "head_box": self.head_boxes[index]}

    def describe(self, index: int) -> str:
        """`<dataset> example <index> (<image file>)`, for error messages."""
        return f"{self.dataset} example {index} ({self.image_paths[index]})"


def no_head_boxes(n: int) -> np.ndarray:
    """(n, 4) float32 NaN: no head box."""
    return np.full((n, 4), np.nan, np.float32)


def make(dataset: str, image_paths: Sequence[str], joints, visibility, center, scale,
         others_joints=None, others_visibility=None, head_boxes=None) -> Annotations:
    """An `Annotations` table with the documented dtypes; no other people and no head boxes
    (NaN) unless given."""
    joints = np.asarray(joints, np.float32)
    n, p = joints.shape[:2]
    if others_joints is None:
        others_joints = np.zeros((n, 0, p, 2), np.float32)
        others_visibility = np.zeros((n, 0, p), np.int32)
    head_boxes = no_head_boxes(n) if head_boxes is None else np.asarray(head_boxes, np.float32)
    if head_boxes.shape != (n, 4):
        raise ValueError(f"{dataset}: head_boxes {head_boxes.shape} must be ({n}, 4)")
    return Annotations(dataset, np.asarray(image_paths, dtype=object), joints,
                       np.asarray(visibility, np.int32), np.asarray(center, np.float32),
                       np.asarray(scale, np.float32), np.asarray(others_joints, np.float32),
                       np.asarray(others_visibility, np.int32), head_boxes)


def concatenate(dataset: str, parts: Sequence[Annotations]) -> Annotations:
    """Rows of `parts` one after the other (others padded to the largest K)."""
    k = max(a.others_joints.shape[1] for a in parts)

    def pad(x, value=0):
        widths = [(0, 0), (0, k - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
        return np.pad(x, widths, constant_values=value)

    return Annotations(
        dataset, np.concatenate([a.image_paths for a in parts]),
        *(np.concatenate([getattr(a, name) for a in parts])
          for name in ("joints", "visibility", "center", "scale")),
        np.concatenate([pad(a.others_joints) for a in parts]),
        np.concatenate([pad(a.others_visibility) for a in parts]),
        np.concatenate([a.head_boxes for a in parts]))


def check_record(record: dict, where: str) -> None:
    """Raises BadExampleError naming `where` for a record no pipeline can use: NaN or infinite
    labelled coordinates, a centre that is not finite or lies outside the image (and, said so,
    no labelled joint to place the person by), a scale that is not a positive number, a head box
    that is neither four numbers nor absent (all NaN). Joints outside the image are valid
    (truncated people)."""
    height, width = record["image"].shape[:2]
    labelled = record["visibility"] > 0
    broken = labelled & ~np.isfinite(record["joints"]).all(-1)
    if broken.any():
        raise BadExampleError(f"{where}: NaN or infinite coordinates for joints {np.flatnonzero(broken).tolist()}")
    if not (np.isfinite(record["others_joints"]).all(-1) | (record["others_visibility"] == 0)).all():
        raise BadExampleError(f"{where}: NaN or infinite coordinates of another person in the image")
    cx, cy = (float(v) for v in record["center"])
    if not np.isfinite([cx, cy]).all() and not labelled.any():
        raise BadExampleError(f"{where}: no joint is labelled, so the person's centre and scale "
                              "cannot be estimated")
    if not (np.isfinite([cx, cy]).all() and -0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
        raise BadExampleError(f"{where}: person centre ({cx:.1f}, {cy:.1f}) lies outside the "
                              f"{width}x{height} image")
    scale = float(record["scale"])
    if not (np.isfinite(scale) and scale > 0):
        raise BadExampleError(f"{where}: person scale {scale} is not a positive number")
    box = np.asarray(record["head_box"])
    if box.shape != (4,) or not (np.isfinite(box).all() or np.isnan(box).all()):
        raise BadExampleError(f"{where}: head box {box.tolist()} is neither x1 y1 x2 y2 nor absent (NaN)")
