"""Pose metrics in numpy (reference section 6). Fractions in [0, 1]; callers print percent."""
import numpy as np

from data_pipelines import skeleton


def torso_size(gt: np.ndarray, joints: skeleton.Skeleton = skeleton.LSP) -> np.ndarray:
    """(N,) ground-truth left-shoulder-to-right-hip distance in pixels; gt is (N, P, 2)."""
    a, b = joints.torso_indices
    return np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)


def pck(pred: np.ndarray, gt: np.ndarray, normaliser: np.ndarray, threshold: float,
        counted: np.ndarray | None = None, joints: skeleton.Skeleton = skeleton.LSP) -> dict:
    """Percentage of correct keypoints: error <= threshold x normaliser.

    Args:
      pred, gt: (N, P, 2) pixel coordinates in the same frame.
      normaliser: (N,) pixels per example.
      counted: (N, P) bool, the joints that count (all by default).
      joints: the joint order (names and paper groups) of the P joints.
    Returns:
      {"total": fraction over counted joints, "joints": {name: fraction}, "parts": {group: mean
      of its joints' fractions}}.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pck: predictions {pred.shape} and ground truth {gt.shape} must both be (N, P, 2)")
    counted = np.ones(gt.shape[:2], bool) if counted is None else np.asarray(counted, bool)
    error = np.linalg.norm(pred - gt, axis=-1)
    hits = (error <= threshold * np.asarray(normaliser, np.float64)[:, None]) & counted
    per_joint = hits.sum(0) / np.maximum(counted.sum(0), 1)
    by_joint = {name: float(per_joint[i]) for i, name in enumerate(joints.joint_names)}
    parts = {group: float(np.mean([by_joint[n] for n in names]))
             for group, names in joints.part_groups.items()}
    return {"total": float(hits.sum() / max(counted.sum(), 1)), "joints": by_joint, "parts": parts}


def lsp_pck(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.2,
            joints: skeleton.Skeleton = skeleton.LSP) -> dict:
    """LSP PCK@threshold: torso-normalised, every joint counts (visibility ignored)."""
    return pck(pred, gt, torso_size(np.asarray(gt, np.float64), joints), threshold, joints=joints)
