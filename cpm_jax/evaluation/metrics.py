"""Pose metrics in numpy (the paper, section 4.2; docs/paper_notes.md section 6). Fractions in
[0, 1]; callers print percent.

Every metric is PCK: joint j of example i is correct when its error is at most
`threshold x normaliser[i]`, with `<=` (a joint exactly at the threshold is correct) and no
division anywhere, so that a threshold is used exactly as given (a = 0.1 is 0.1, never 0.11).
The benchmarks (`BENCHMARKS`) differ in the normaliser and in which joints count:

  lsp       PCK@a   ground-truth left shoulder to right hip; all 14 joints of every example
                    count (visibility ignored): total = hits / (N x 14)
  flic      PCK@a   the same normaliser (the published numbers; the release's MATLAB divided by
                    the predicted torso); only elbows and wrists are scored
  mpii      PCKh@a  0.6 x the diagonal of the annotated head box (x1, y1, x2, y2); only annotated
                    joints of the 14 project joints (no pelvis, no thorax): hits / annotated
  labelled  PCK@a   no official benchmark (LSPET, synthetic): as lsp, but only labelled joints of
                    examples whose torso joints are both labelled count

Conventions: a zero normaliser makes the threshold zero (correct only at error 0; no NaN, no
error). `total` pools the counted joints; `joints` is each scored joint's fraction; `parts` the
paper's groups (head = head top and neck; shoulder ... ankle = left and right) as the MEAN of
their joints' fractions, for groups whose joints are all scored (LSP, MPII: seven; FLIC: elbow,
wrist). A scored joint with no counted instance is None, so is its group, and `total` when
nothing counts. Non-finite predictions, or a non-finite ground truth or normaliser where a joint
counts, are a ValueError (never a silently wrong score).
"""
import dataclasses
from typing import Sequence

import numpy as np

from data_pipelines import skeleton

HEAD_SIZE_FACTOR = 0.6          # MPII: head segment = 0.6 x head-box diagonal (SC_BIAS)


def _percent_steps(last: int) -> tuple[float, ...]:
    """0, 0.01, ..., last / 100, each the float nearest the decimal (i / 100, no accumulation)."""
    return tuple(i / 100 for i in range(last + 1))


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str                            # "lsp", "flic", "mpii"
    metric: str                          # "PCK" or "PCKh"
    joints: skeleton.Skeleton            # the order of the (N, P, 2) arrays
    scored: tuple[str, ...]              # joint names that are scored
    default_threshold: float
    curve_thresholds: tuple[float, ...]  # default thresholds of a curve
    normaliser: str                      # in words, for reports
    counts: str = "annotated"            # which joints count: "all", "annotated", or
                                         # "annotated_torso" (annotated, torso labelled)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(g for g, names in self.joints.part_groups.items()
                     if all(n in self.scored for n in names))


BENCHMARKS: dict[str, Benchmark] = {
    "lsp": Benchmark("lsp", "PCK", skeleton.LSP, skeleton.LSP.joint_names, 0.2, _percent_steps(20),
                     "ground-truth left shoulder to right hip"),
    "flic": Benchmark("flic", "PCK", skeleton.FLIC, ("l_elbow", "l_wrist", "r_elbow", "r_wrist"), 0.2,
                      _percent_steps(20), "ground-truth left shoulder to right hip"),
    "mpii": Benchmark("mpii", "PCKh", skeleton.LSP, skeleton.LSP.joint_names, 0.5, _percent_steps(50),
                      f"{HEAD_SIZE_FACTOR} x head-box diagonal"),
    "labelled": Benchmark("labelled", "PCK", skeleton.LSP, skeleton.LSP.joint_names, 0.2, _percent_steps(20),
                          "ground-truth left shoulder to right hip", counts="annotated_torso"),
}
BENCHMARKS["lsp"] = dataclasses.replace(BENCHMARKS["lsp"], counts="all")


def torso_size(gt: np.ndarray, joints: skeleton.Skeleton = skeleton.LSP) -> np.ndarray:
    """(N,) ground-truth left-shoulder-to-right-hip distance in pixels; gt is (N, P, 2)."""
    a, b = joints.torso_indices
    return np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)


def head_size(head_boxes: np.ndarray) -> np.ndarray:
    """(N,) MPII head segment: 0.6 x the diagonal of each head box (N, 4) x1 y1 x2 y2."""
    boxes = np.asarray(head_boxes, np.float64).reshape(-1, 4)
    return HEAD_SIZE_FACTOR * np.linalg.norm(boxes[:, 2:] - boxes[:, :2], axis=-1)


def _checked(pred, gt, normaliser, counted, joints, scored):
    """(error (N, P), normaliser (N,), counted (N, P) restricted to scored joints, scored indices)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pck: predictions {pred.shape} and ground truth {gt.shape} must both be (N, P, 2)")
    n, p = gt.shape[:2]
    if p != joints.num_joints:
        raise ValueError(f"pck: {p} joints per example, but the joint order has {joints.num_joints}")
    counted = np.ones((n, p), bool) if counted is None else np.asarray(counted, bool)
    if counted.shape != (n, p):
        raise ValueError(f"pck: counted {counted.shape} must be (N, P) = {(n, p)}")
    normaliser = np.asarray(normaliser, np.float64)
    if normaliser.shape != (n,):
        raise ValueError(f"pck: normaliser {normaliser.shape} must be (N,) = {(n,)}")
    names = joints.joint_names if scored is None else tuple(scored)
    unknown = [s for s in names if s not in joints.index]
    if unknown:
        raise ValueError(f"pck: unknown scored joints {unknown}")
    columns = np.array([joints.index[s] for s in names], np.int64)
    mask = np.zeros(p, bool)
    mask[columns] = True
    counted = counted & mask[None]
    bad = ~np.isfinite(pred).all(-1) & mask[None]
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"pck: prediction {i} joint {joints.joint_names[j]} is not finite "
                         f"({bad.sum()} such joints)")
    bad = ~np.isfinite(gt).all(-1) & counted
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"pck: ground truth {i} joint {joints.joint_names[j]} is not finite but counts")
    bad = ~(np.isfinite(normaliser) & (normaliser >= 0)) & counted.any(1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"pck: normaliser of example {i} is {normaliser[i]} (must be finite and >= 0)")
    with np.errstate(invalid="ignore"):
        error = np.linalg.norm(pred - gt, axis=-1)
    return error, normaliser, counted, names


def _threshold(value) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"pck: threshold {value} must be finite and >= 0")
    return value


def _summarise(hits, counted, joints, names) -> dict:
    by_joint = {}
    for name in names:
        j = joints.index[name]
        c = int(counted[:, j].sum())
        by_joint[name] = float(hits[:, j].sum() / c) if c else None
    parts = {}
    for group, members in joints.part_groups.items():
        if all(m in names for m in members):
            values = [by_joint[m] for m in members]
            parts[group] = None if any(v is None for v in values) else float(np.mean(values))
    total = int(counted.sum())
    return {"total": float(hits.sum() / total) if total else None, "joints": by_joint, "parts": parts,
            "counted": total}


def pck(pred: np.ndarray, gt: np.ndarray, normaliser: np.ndarray, threshold: float,
        counted: np.ndarray | None = None, joints: skeleton.Skeleton = skeleton.LSP,
        scored: Sequence[str] | None = None) -> dict:
    """Percentage of correct keypoints: error <= threshold x normaliser (conventions above).

    Args:
      pred, gt: (N, P, 2) pixel coordinates in the same frame.
      normaliser: (N,) pixels per example.
      threshold: a, used exactly as given.
      counted: (N, P) bool, the joints that count (all by default).
      joints: the joint order (names and paper groups) of the P joints.
      scored: names of the joints scored (all by default); the others are ignored entirely.
    Returns:
      {"total": fraction over counted scored joints, "joints": {name: fraction}, "parts": {group:
      mean of its joints' fractions}, "counted": number of counted joints}.
    """
    error, normaliser, counted, names = _checked(pred, gt, normaliser, counted, joints, scored)
    hits = (error <= _threshold(threshold) * normaliser[:, None]) & counted
    return _summarise(hits, counted, joints, names)


def pck_curve(pred: np.ndarray, gt: np.ndarray, normaliser: np.ndarray, thresholds: Sequence[float],
              counted: np.ndarray | None = None, joints: skeleton.Skeleton = skeleton.LSP,
              scored: Sequence[str] | None = None) -> dict:
    """`pck` at every threshold: {"thresholds": [a, ...], "total": [...], "joints": {name: [...]},
    "parts": {group: [...]}} (lists aligned with the thresholds)."""
    error, normaliser, counted, names = _checked(pred, gt, normaliser, counted, joints, scored)
    thresholds = [_threshold(a) for a in thresholds]
    results = [_summarise((error <= a * normaliser[:, None]) & counted, counted, joints, names)
               for a in thresholds]
    first = results[0] if results else _summarise(np.zeros_like(counted), counted, joints, names)
    return {"thresholds": thresholds, "total": [r["total"] for r in results],
            "joints": {k: [r["joints"][k] for r in results] for k in first["joints"]},
            "parts": {k: [r["parts"][k] for r in results] for k in first["parts"]}}


def lsp_pck(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.2,
            joints: skeleton.Skeleton = skeleton.LSP) -> dict:
    """LSP PCK@threshold: torso-normalised, every joint counts (visibility ignored)."""
    return pck(pred, gt, torso_size(np.asarray(gt, np.float64), joints), threshold, joints=joints)


def flic_pck(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.2,
             counted: np.ndarray | None = None) -> dict:
    """FLIC PCK@threshold of elbows and wrists, normalised by the ground-truth torso (l_shoulder to
    r_hip); (N, 9, 2) arrays in the FLIC 9-part order; `counted` (N, 9): annotated parts."""
    b = BENCHMARKS["flic"]
    return pck(pred, gt, torso_size(np.asarray(gt, np.float64), b.joints), threshold, counted,
               b.joints, b.scored)


def mpii_pckh(pred: np.ndarray, gt: np.ndarray, head_boxes: np.ndarray, counted: np.ndarray,
              threshold: float = 0.5) -> dict:
    """MPII PCKh@threshold over (N, 14, 2) arrays in the project (LSP) order; `head_boxes` (N, 4)
    x1 y1 x2 y2 (NaN allowed for people with no annotated joint); `counted` (N, 14) annotated."""
    return pck(pred, gt, head_size(head_boxes), threshold, counted, skeleton.LSP)


def normaliser(benchmark: str, gt: np.ndarray, head_boxes: np.ndarray | None = None) -> np.ndarray:
    """(N,) the benchmark's normaliser: the ground-truth torso (lsp, flic) or head size (mpii)."""
    if benchmark == "mpii":
        if head_boxes is None:
            raise ValueError("mpii PCKh needs the head boxes")
        return head_size(head_boxes)
    return torso_size(np.asarray(gt, np.float64), BENCHMARKS[benchmark].joints)


def counted_joints(benchmark: str, counted: np.ndarray | None, joints: skeleton.Skeleton) -> np.ndarray | None:
    """The (N, P) joints that count under `benchmark`'s rule, from the annotated ones `counted`."""
    rule = BENCHMARKS[benchmark].counts
    if rule == "all" or counted is None:
        return None
    counted = np.asarray(counted, bool)
    if rule == "annotated_torso":
        a, b = joints.torso_indices
        counted = counted & (counted[:, a] & counted[:, b])[:, None]
    return counted


def score(benchmark: str, pred: np.ndarray, gt: np.ndarray, threshold: float | None = None,
          counted: np.ndarray | None = None, head_boxes: np.ndarray | None = None) -> dict:
    """`pck` as `benchmark` (a BENCHMARKS name) defines it (threshold: its default when None);
    `counted`: the annotated joints, restricted by the benchmark's rule (lsp: every joint)."""
    b = BENCHMARKS[benchmark]
    return pck(pred, gt, normaliser(benchmark, gt, head_boxes),
               b.default_threshold if threshold is None else threshold,
               counted_joints(benchmark, counted, b.joints), b.joints, b.scored)


def curve(benchmark: str, pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] | None = None,
          counted: np.ndarray | None = None, head_boxes: np.ndarray | None = None) -> dict:
    """`pck_curve` as the benchmark defines it; thresholds: its default range (0..0.2 for PCK,
    0..0.5 for PCKh, step 0.01) when None."""
    b = BENCHMARKS[benchmark]
    return pck_curve(pred, gt, normaliser(benchmark, gt, head_boxes),
                     b.curve_thresholds if thresholds is None else thresholds,
                     counted_joints(benchmark, counted, b.joints), b.joints, b.scored)
