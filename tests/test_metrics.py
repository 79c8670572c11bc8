"""PCK on hand-built cases (what the training loop reports)."""
import numpy as np
import pytest

from cpm_jax import metrics
from data_pipelines import skeleton


def person(torso=10.0):
    gt = np.zeros((1, 14, 2))
    gt[0, skeleton.JOINT_INDEX["l_shoulder"]] = (0.0, 0.0)
    gt[0, skeleton.JOINT_INDEX["r_hip"]] = (0.0, torso)
    return gt


def test_exact_threshold_counts_and_just_beyond_does_not():
    gt = person(10.0)
    pred = gt.copy()
    pred[0, 0] += (2.0, 0.0)         # exactly 0.2 x 10: correct
    pred[0, 1] += (0.0, 2.0 + 1e-6)  # just beyond
    result = metrics.lsp_pck(pred, gt, 0.2)
    assert result["joints"]["r_ankle"] == 1.0
    assert result["joints"]["r_knee"] == 0.0
    assert result["total"] == pytest.approx(13 / 14)


def test_groups_are_means_of_left_and_right():
    gt = np.repeat(person(), 2, axis=0)
    pred = gt.copy()
    pred[0, skeleton.JOINT_INDEX["r_wrist"]] += 100  # wrong in one of two images
    result = metrics.lsp_pck(pred, gt)
    assert result["joints"]["r_wrist"] == 0.5 and result["joints"]["l_wrist"] == 1.0
    assert result["parts"]["wrist"] == pytest.approx(0.75)
    assert set(result["parts"]) == {"head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"}


def test_zero_normaliser_only_exact_hits_count():
    gt = person(0.0)
    pred = gt.copy()
    pred[0, 5] += 0.5
    result = metrics.lsp_pck(pred, gt)
    assert result["joints"]["l_ankle"] == 0.0 and result["joints"]["r_ankle"] == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must both be"):
        metrics.lsp_pck(np.zeros((2, 14, 2)), np.zeros((3, 14, 2)))
