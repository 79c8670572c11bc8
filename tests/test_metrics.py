"""PCK, PCKh and their curves on hand-built cases, against the definitions (docs/paper_notes.md section 6)."""
import math
import warnings

import numpy as np
import pytest

from cpm_jax.evaluation import metrics
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


# ---------------------------------------------------------------------------- the three benchmarks
L, F = skeleton.LSP.index, skeleton.FLIC.index


def reference_pck(pred, gt, norm, a, counted, names, order):
    """PCK straight from the definition, joint by joint with math.hypot."""
    hits = {n: 0 for n in names}
    seen = {n: 0 for n in names}
    for i in range(len(gt)):
        for n in names:
            j = order.index[n]
            if counted[i][j]:
                seen[n] += 1
                hits[n] += math.hypot(*(pred[i][j] - gt[i][j])) <= a * norm[i]
    total = sum(hits.values()) / sum(seen.values())
    return total, {n: hits[n] / seen[n] for n in names}


def random_case(n, p, seed, spread=6.0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 200, (n, p, 2))
    pred = gt + rng.normal(0, spread, (n, p, 2))
    return pred, gt


def test_lsp_matches_the_definition_on_random_people():
    pred, gt = random_case(40, 14, 1, spread=12.0)
    torso = [math.dist(g[L["l_shoulder"]], g[L["r_hip"]]) for g in gt]
    total, per_joint = reference_pck(pred, gt, torso, 0.2, np.ones((40, 14)), skeleton.LSP.joint_names,
                                     skeleton.LSP)
    result = metrics.lsp_pck(pred, gt, 0.2)
    assert 0 < total < 1
    assert result["total"] == pytest.approx(total)
    assert result["joints"] == pytest.approx(per_joint)
    assert result["parts"]["head"] == pytest.approx((per_joint["head_top"] + per_joint["neck"]) / 2)
    assert result["parts"]["knee"] == pytest.approx((per_joint["l_knee"] + per_joint["r_knee"]) / 2)
    assert result["counted"] == 40 * 14
    assert metrics.score("lsp", pred, gt) == result


def flic_person(torso=(0.0, 0.0, 0.0, 50.0)):
    """FLIC 9 parts at distinct places; l_shoulder and r_hip `torso` apart (ground truth)."""
    gt = np.arange(18, dtype=float).reshape(1, 9, 2) * 7.0
    gt[0, F["l_shoulder"]] = torso[:2]
    gt[0, F["r_hip"]] = torso[2:]
    return gt


def test_flic_scores_only_elbows_and_wrists_with_the_ground_truth_torso():
    gt = np.repeat(flic_person(), 2, axis=0)        # torso 50 px: a = 0.2 -> 10 px
    pred = gt.copy()
    pred[:, F["nose"]] += 500                       # never scored
    pred[:, F["l_shoulder"]] += 300                 # moves the PREDICTED torso only
    pred[:, F["r_hip"]] += 300
    pred[0, F["l_elbow"]] += (10.0, 0.0)            # exactly at 0.2 x 50: correct
    pred[1, F["l_elbow"]] += (0.0, 10.0 + 1e-9)     # just beyond
    pred[0, F["r_wrist"]] += (6.0, 8.0)             # 10 px: correct
    pred[1, F["r_wrist"]] += (30.0, 40.0)           # 50 px: wrong
    result = metrics.flic_pck(pred, gt, 0.2)
    assert set(result["joints"]) == {"l_elbow", "r_elbow", "l_wrist", "r_wrist"}
    assert set(result["parts"]) == {"elbow", "wrist"}
    assert result["joints"] == {"l_elbow": 0.5, "r_elbow": 1.0, "l_wrist": 1.0, "r_wrist": 0.5}
    assert result["parts"] == {"elbow": 0.75, "wrist": 0.75}
    assert result["total"] == 6 / 8 and result["counted"] == 8


def test_flic_counts_only_annotated_parts():
    gt = np.repeat(flic_person(), 3, axis=0)
    pred = gt.copy()
    pred[2, F["l_wrist"]] += 100                     # wrong, but not annotated
    pred[1, F["r_elbow"]] += 100                     # wrong
    counted = np.ones((3, 9), bool)
    counted[2, F["l_wrist"]] = False
    result = metrics.flic_pck(pred, gt, 0.2, counted)
    assert result["joints"]["l_wrist"] == 1.0 and result["joints"]["r_elbow"] == pytest.approx(2 / 3)
    assert result["total"] == pytest.approx(10 / 11)


def mpii_people():
    """Three people: head boxes 30x40 (diagonal 50, head size 30 px), 0x0 and 6x8 (head 6 px)."""
    gt = np.zeros((3, 14, 2))
    gt[:] = np.arange(14)[None, :, None] * 10.0
    boxes = np.array([[10, 20, 40, 60], [5, 5, 5, 5], [0, 0, 6, 8]], float)
    return gt, boxes


def test_pckh_head_size_is_0_6_of_the_box_diagonal():
    _, boxes = mpii_people()
    assert metrics.head_size(boxes) == pytest.approx([0.6 * 50, 0.0, 0.6 * 10])


def test_pckh_threshold_0_1_is_exactly_0_1_and_missing_joints_do_not_count():
    gt, boxes = mpii_people()
    head = 0.6 * math.hypot(30, 40)
    pred = gt.copy()
    counted = np.ones((3, 14), bool)
    counted[1] = False                               # person 2: nothing annotated (zero head box)
    counted[2, L["r_ankle"]] = False                  # person 3: r_ankle missing
    pred[2, L["r_ankle"]] += 1000                     # ... so its error does not count
    pred[0, L["r_wrist"]] += (0.1 * head, 0.0)        # exactly at a = 0.1: correct
    pred[0, L["l_wrist"]] += (0.105 * head, 0.0)      # within 0.11 but beyond 0.1: wrong
    pred[2, L["l_wrist"]] += (0.1 * 6.0 * 1.05, 0.0)  # beyond 0.1 x 6 px: wrong
    result = metrics.mpii_pckh(pred, gt, boxes, counted, threshold=0.1)
    annotated = counted.sum()
    assert result["counted"] == annotated == 27
    assert result["total"] == pytest.approx((annotated - 2) / annotated)
    assert result["joints"]["r_wrist"] == 1.0
    assert result["joints"]["l_wrist"] == 0.0
    assert result["joints"]["r_ankle"] == 1.0       # one annotated instance, correct
    assert result["parts"]["wrist"] == 0.5
    assert set(result["parts"]) == {"head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"}
    # Same numbers through the benchmark entry point, from the definition.
    total, per_joint = reference_pck(pred, gt, metrics.head_size(boxes), 0.1, counted,
                                     skeleton.LSP.joint_names, skeleton.LSP)
    scored = metrics.score("mpii", pred, gt, 0.1, counted, boxes)
    assert scored["total"] == pytest.approx(total) and scored["joints"] == pytest.approx(per_joint)
    # At the headline 0.5 every annotated joint is correct; a = 0.11 would pass both wrists.
    assert metrics.mpii_pckh(pred, gt, boxes, counted)["total"] == 1.0
    assert metrics.mpii_pckh(pred, gt, boxes, counted, threshold=0.11)["joints"]["l_wrist"] == 1.0


def test_zero_normaliser_is_exact_hits_only_without_nan_or_warnings():
    gt, boxes = mpii_people()
    boxes[:] = (5, 5, 5, 5)                           # every head size 0
    pred = gt.copy()
    pred[0, 3] += 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            result = metrics.mpii_pckh(pred, gt, boxes, np.ones((3, 14), bool), threshold=0.5)
            flic = metrics.flic_pck(np.zeros((1, 9, 2)), np.zeros((1, 9, 2)))
            curve = metrics.curve("mpii", pred, gt, counted=np.ones((3, 14), bool), head_boxes=boxes)
    assert result["total"] == pytest.approx(41 / 42)
    assert result["joints"]["l_hip"] == pytest.approx(2 / 3)
    assert flic["total"] == 1.0
    assert all(not math.isnan(v) for v in curve["total"])


def test_a_joint_nobody_annotated_is_none_not_zero():
    gt, boxes = mpii_people()
    counted = np.ones((3, 14), bool)
    counted[:, L["neck"]] = False
    result = metrics.mpii_pckh(gt, gt, boxes, counted)
    assert result["joints"]["neck"] is None and result["parts"]["head"] is None
    assert result["total"] == 1.0 and result["parts"]["ankle"] == 1.0
    nobody = metrics.mpii_pckh(gt, gt, boxes, np.zeros((3, 14), bool))
    assert nobody["total"] is None and nobody["counted"] == 0


def test_curve_is_pck_at_each_threshold_and_the_default_ranges():
    pred, gt = random_case(30, 14, 2, spread=10.0)
    curve = metrics.curve("lsp", pred, gt)
    assert curve["thresholds"][0] == 0.0 and curve["thresholds"][-1] == 0.2 and len(curve["thresholds"]) == 21
    assert 0.1 in curve["thresholds"] and 0.05 in curve["thresholds"]   # the decimals themselves
    for k, a in enumerate(curve["thresholds"]):
        at = metrics.lsp_pck(pred, gt, a)
        assert curve["total"][k] == at["total"]
        assert {g: v[k] for g, v in curve["parts"].items()} == at["parts"]
        assert {n: v[k] for n, v in curve["joints"].items()} == at["joints"]
    assert np.all(np.diff(curve["total"]) >= 0) and curve["total"][-1] > curve["total"][0]
    mpii = metrics.BENCHMARKS["mpii"].curve_thresholds
    assert mpii[0] == 0.0 and mpii[-1] == 0.5 and 0.1 in mpii and len(mpii) == 51
    flic = metrics.curve("flic", np.zeros((1, 9, 2)), flic_person())
    assert set(flic["parts"]) == {"elbow", "wrist"} and flic["thresholds"][-1] == 0.2


def test_non_finite_inputs_are_errors_where_they_would_count():
    gt, boxes = mpii_people()
    counted = np.ones((3, 14), bool)
    pred = gt.copy()
    pred[1, 4] = np.nan
    with pytest.raises(ValueError, match="prediction 1 joint l_knee is not finite"):
        metrics.mpii_pckh(pred, gt, boxes, counted)
    bad_boxes = boxes.copy()
    bad_boxes[0] = np.nan
    with pytest.raises(ValueError, match="normaliser of example 0"):
        metrics.mpii_pckh(gt, gt, bad_boxes, counted)
    counted[0] = False                                 # a NaN box of a person with nothing annotated
    gt_nan = gt.copy()
    gt_nan[0] = np.nan
    assert metrics.mpii_pckh(gt, gt_nan, bad_boxes, counted)["total"] == 1.0
    with pytest.raises(ValueError, match="threshold"):
        metrics.lsp_pck(gt, gt, float("nan"))
