"""Belief-map targets and the center map (docs/paper_notes.md sections 1 and 3)."""
import numpy as np
import pytest

from data_pipelines import targets


def one_joint(x, y, visible=2, size=64, sigma=7.0):
    joints = np.zeros((14, 2), np.float32)
    joints[3] = (x, y)
    vis = np.zeros((14,), np.int32)
    vis[3] = visible
    return np.asarray(targets.belief_targets(joints, vis, size, sigma=sigma))


def test_cell_centres_are_at_3_5_plus_8g():
    np.testing.assert_array_equal(targets.cell_centres(4), [3.5, 11.5, 19.5, 27.5])


def test_peak_location_value_and_gaussian_shape():
    maps = one_joint(19.5, 27.5)  # exactly the centre of cell (x=2, y=3)
    assert maps.shape == (8, 8, 15)
    assert np.unravel_index(np.argmax(maps[..., 3]), (8, 8)) == (3, 2)
    assert maps[3, 2, 3] == pytest.approx(1.0)
    # One cell away (8 px) along x: exp(-64 / (2 * 49)).
    assert maps[3, 3, 3] == pytest.approx(np.exp(-64 / 98), rel=1e-5)
    # Diagonal neighbour, 128 px^2 away.
    assert maps[4, 3, 3] == pytest.approx(np.exp(-128 / 98), rel=1e-5)


def test_values_below_cutoff_are_zero():
    maps = one_joint(19.5, 27.5)[..., 3]
    d2 = (targets.cell_centres(8)[None, :] - 19.5) ** 2 + (targets.cell_centres(8)[:, None] - 27.5) ** 2
    expected = np.exp(-d2 / 98)
    np.testing.assert_allclose(maps, np.where(expected < 0.01, 0, expected), rtol=1e-5, atol=1e-7)
    assert (expected < 0.01).any() and (maps[expected < 0.01] == 0).all()


def test_background_is_one_minus_max_of_parts():
    maps = one_joint(19.5, 27.5)
    np.testing.assert_allclose(maps[..., -1], np.maximum(0, 1 - maps[..., :-1].max(-1)), rtol=1e-6)
    assert maps[3, 2, -1] == pytest.approx(0.0, abs=1e-6)
    assert maps[0, 7, -1] == pytest.approx(1.0)


def test_unlabelled_joints_get_no_peak_occluded_do():
    assert one_joint(19.5, 27.5, visible=0)[..., :-1].max() == 0.0
    assert one_joint(19.5, 27.5, visible=0)[..., -1].min() == 1.0
    assert one_joint(19.5, 27.5, visible=1)[..., 3].max() == pytest.approx(1.0)
    # Only joint 3 was labelled: every other part map is empty.
    assert np.delete(one_joint(19.5, 27.5), 3, axis=-1)[..., :-1].max() == 0.0


def test_joint_outside_crop_gives_no_peak():
    assert one_joint(-60.0, 20.0)[..., 3].max() == 0.0


def test_peaks_of_several_people_are_summed_and_clipped():
    joints = np.zeros((2, 14, 2), np.float32)
    joints[0, 3] = (19.5, 27.5)
    joints[1, 3] = (27.5, 27.5)  # one cell to the right
    vis = np.zeros((2, 14), np.int32)
    vis[:, 3] = 2
    maps = np.asarray(targets.belief_targets(joints, vis, 64))[..., 3]
    assert maps[3, 2] == pytest.approx(1.0)  # 1 + 0.52 clipped
    one_cell, two_cells = np.exp(-64 / 98), np.exp(-256 / 98)
    assert maps[3, 4] == pytest.approx(one_cell + two_cells, rel=1e-5)
    assert maps[3, 1] == pytest.approx(one_cell + two_cells, rel=1e-5)
    # Cell 5 is 3 cells from the first person (0.003, cut to 0 before summing) and 2 from the second.
    assert maps[3, 5] == pytest.approx(two_cells, rel=1e-5)


def test_center_map_shape_peak_and_pooling():
    cmap = targets.center_map(368)
    assert cmap.shape == (46, 46, 1)
    peak = np.unravel_index(np.argmax(cmap[..., 0]), (46, 46))
    assert peak in {(22, 22), (22, 23), (23, 22), (23, 23)}
    # Brute force: the Gaussian at full resolution averaged over clipped 9x9 windows, stride 8.
    pix = np.arange(368)
    g = np.exp(-((pix[:, None] - 183.5) ** 2 + (pix[None, :] - 183.5) ** 2) / (2 * 21.0 ** 2))
    for gy, gx in [(0, 0), (22, 23), (45, 45), (10, 40)]:
        window = g[8 * gy:8 * gy + 9, 8 * gx:8 * gx + 9]
        assert cmap[gy, gx, 0] == pytest.approx(window.mean(), rel=1e-5)
