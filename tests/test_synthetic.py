"""Tests for the procedural stick-figure dataset (data_pipelines/synthetic.py)."""

import numpy as np
import pytest

from data_pipelines import synthetic

R_HIP, L_HIP, R_SHOULDER, L_SHOULDER, NECK, HEAD_TOP = 2, 3, 8, 9, 12, 13
# (right bone, mirrored left bone) as joint-index pairs.
MIRRORED_BONES = [
    ((8, 7), (9, 10)),  # upper arm
    ((7, 6), (10, 11)),  # forearm
    ((2, 1), (3, 4)),  # thigh
    ((1, 0), (4, 5)),  # shin
]
ARM_BONES = [(8, 7), (7, 6), (9, 10), (10, 11)]


def _examples(n, seed=0, split="train", image_size=160):
    return [synthetic.render_example(seed, split, i, image_size) for i in range(n)]


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].dtype == b[key].dtype


def test_deterministic():
    _assert_same(synthetic.render_example(3, "train", 7), synthetic.render_example(3, "train", 7))
    _assert_same(synthetic.render_example(3, "heldout", 0, 96),
                 synthetic.render_example(3, "heldout", 0, 96))


@pytest.mark.parametrize("other", [(3, "train", 8), (3, "heldout", 7), (4, "train", 7)])
def test_different_arguments_differ(other):
    base = synthetic.render_example(3, "train", 7)
    changed = synthetic.render_example(*other)
    assert not np.array_equal(base["image"], changed["image"])
    assert not np.allclose(base["joints"], changed["joints"])


@pytest.mark.parametrize("image_size", [160, 128])
def test_shapes_and_dtypes(image_size):
    ex = synthetic.render_example(0, "train", 0, image_size)
    assert set(ex) == {"image", "joints", "visibility", "center", "scale"}
    assert ex["image"].shape == (image_size, image_size, 3) and ex["image"].dtype == np.uint8
    assert ex["joints"].shape == (synthetic.NUM_JOINTS, 2) and ex["joints"].dtype == np.float32
    assert ex["visibility"].shape == (synthetic.NUM_JOINTS,)
    assert ex["visibility"].dtype == np.int32
    assert np.all(np.isin(ex["visibility"], (1, 2)))
    assert ex["center"].shape == (2,) and ex["center"].dtype == np.float32
    assert ex["scale"].shape == () and ex["scale"].dtype == np.float32
    assert synthetic.NUM_JOINTS == 14 and synthetic.SPLITS == ("train", "heldout")


@pytest.mark.parametrize("image_size", [160, 128])
def test_joints_inside_image_and_centre_is_bbox_midpoint(image_size):
    for ex in _examples(150, seed=1, image_size=image_size):
        joints = ex["joints"]
        assert joints.min() >= 3.0 and joints.max() <= image_size - 1 - 3.0
        np.testing.assert_allclose(ex["center"], 0.5 * (joints.min(0) + joints.max(0)),
                                   atol=1e-3)
        assert 0.3 * image_size <= ex["scale"] <= 0.8 * image_size


def test_scale_spans_requested_range():
    scales = np.array([ex["scale"] for ex in _examples(200, seed=2)]) / 160
    assert scales.min() < 0.5 and scales.max() > 0.75


def test_bone_lengths_consistent_with_scale():
    for ex in _examples(200, seed=3, split="heldout"):
        j, scale = ex["joints"].astype(np.float64), float(ex["scale"])
        for (ra, rb), (la, lb) in MIRRORED_BONES:
            right, left = np.linalg.norm(j[ra] - j[rb]), np.linalg.norm(j[la] - j[lb])
            assert 0.8 <= right / left <= 1.25
            assert 0.1 * scale <= right <= 0.3 * scale
        head = np.linalg.norm(j[HEAD_TOP] - j[NECK]) / scale
        assert 0.1 <= head <= 0.2
        torso = np.linalg.norm(0.5 * (j[R_HIP] + j[L_HIP]) - j[NECK]) / scale
        assert 0.2 <= torso <= 0.4


def test_right_side_is_image_left_in_figure_frame():
    """With the figure upright (neck above mid-hip), right shoulder/hip are on the image left.

    In image coordinates (y down), a vector pointing to the image left is a positive
    rotation of the "down" vector, so cross(down, right - left) > 0.
    """
    for ex in _examples(200, seed=4):
        j = ex["joints"].astype(np.float64)
        down = 0.5 * (j[R_HIP] + j[L_HIP]) - j[NECK]
        assert _cross(down, j[R_SHOULDER] - j[L_SHOULDER]) > 0
        assert _cross(down, j[R_HIP] - j[L_HIP]) > 0
        assert np.dot(j[HEAD_TOP] - j[NECK], down) < 0  # head is above the neck


def test_figure_rotation_varies():
    angles = []
    for ex in _examples(200, seed=5):
        j = ex["joints"]
        down = 0.5 * (j[R_HIP] + j[L_HIP]) - j[NECK]
        angles.append(np.degrees(np.arctan2(-down[0], down[1])))
    assert min(angles) < -40 and max(angles) > 40 and max(np.abs(angles)) < 70


def _pixel(image, point):
    x, y = np.rint(point).astype(int)
    return image[y, x].astype(np.float64)


def test_figure_drawn_at_limbs_identically_and_with_contrast():
    """Arm bones share one colour (left = right), unlike the far background."""
    contrasts = []
    for ex in _examples(100, seed=6):
        image, j, scale = ex["image"], ex["joints"], float(ex["scale"])
        size = image.shape[0]
        # Median along each bone, away from every joint's knob (radius <= 0.03 x scale).
        colours = []
        for a, b in ARM_BONES:
            points = [j[a] + f * (j[b] - j[a]) for f in np.linspace(0.1, 0.9, 17)]
            clear = [p for p in points if np.linalg.norm(j - p, axis=1).min() > 0.045 * scale]
            if clear:
                colours.append(np.median([_pixel(image, p) for p in clear], axis=0))
        colours = np.array(colours)
        assert len(colours) >= 2
        assert np.abs(colours - colours.mean(0)).max() <= 30  # noise sigma is ~5
        grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 1, 2)
        far = np.linalg.norm(grid - j[None], axis=-1).min(1) > 0.2 * scale
        background = np.median(image.reshape(-1, 3)[far], axis=0)
        contrasts.append(np.linalg.norm(colours.mean(0) - background))
    contrasts = np.array(contrasts)
    assert np.median(contrasts) > 100
    assert np.mean(contrasts > 60) >= 0.95


def test_pixel_noise_present():
    image = synthetic.render_example(0, "train", 0)["image"].astype(np.float64)
    # sigma ~5 noise gives |horizontal difference| a median of ~5 even in smooth areas
    assert np.median(np.abs(np.diff(image, axis=1))) > 2


def test_bad_split_raises():
    with pytest.raises(ValueError, match="validation"):
        synthetic.render_example(0, "validation", 0)


def test_negative_index_raises():
    with pytest.raises(ValueError):
        synthetic.render_example(0, "train", -1)
