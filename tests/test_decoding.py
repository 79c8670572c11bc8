"""Single-scale decoding (cpm_jax/evaluation/decoding.py), by hand: belief cells -> crop px -> original px.

Conventions (docs/paper_notes.md section 3): cell g is centred on crop px 3.5 + 8 g; pixels are 0-based
with integers at pixel centres. `upsample` is jax.image's "cubic" (Keys, a = -0.5): output pixel
i samples the cells at u = (i + 0.5) / 8 - 0.5, so cell g lands on pixel 8 g + 3.5, between
pixels 8 g + 3 and 8 g + 4 (each 1/16 cell away). Keys' kernel: k(x) = 1.5|x|^3 - 2.5|x|^2 + 1
for |x| <= 1, -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 for 1 < |x| < 2, else 0."""
import numpy as np
import pytest

from cpm_jax.evaluation import decoding
from data_pipelines import pipeline, registry, targets
from tests.conftest import tiny_config


def keys(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    if x < 2:
        return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
    return 0.0


K_NEAR = keys(1 / 16)      # 0.990600586: pixel 8g+3 or 8g+4 from cell g
K_NEXT = keys(15 / 16)     # 0.038696289: pixel 8(g+1)+3 from cell g
K_FAR = keys(17 / 16)      # -0.027465820: pixel 8(g+1)+4 from cell g


def test_keys_weights_by_hand():
    assert K_NEAR == pytest.approx(0.990600586, abs=1e-9)
    assert K_NEXT == pytest.approx(0.0386962890625, abs=1e-12)
    assert K_FAR == pytest.approx(-0.0274658203125, abs=1e-12)


def test_upsample_puts_cell_g_on_pixel_8g_plus_3_5():
    # A delta of 1 in cell (x 2, y 3) of an 8 x 8 grid (64 x 64 crop), part 0 of 2 + background;
    # every pixel checked below has its four kernel taps inside the grid (near the grid's edge
    # jax.image renormalises the weights of the taps that remain).
    beliefs = np.zeros((1, 1, 8, 8, 3), np.float32)
    beliefs[0, 0, 3, 2, 0] = 1.0
    up = np.asarray(decoding.upsample(beliefs))
    assert up.shape == (1, 1, 64, 64, 3)
    u = up[0, 0, ..., 0]
    # The four pixels around (8*2 + 3.5, 8*3 + 3.5) = (19.5, 27.5): each 1/16 cell off on both axes.
    for y in (27, 28):
        for x in (19, 20):
            assert u[y, x] == pytest.approx(K_NEAR * K_NEAR, abs=1e-6)
    assert u.max() == pytest.approx(K_NEAR * K_NEAR, abs=1e-6)
    # One cell further down: 15/16 cell (y 35) and 17/16 cell (y 36) from the delta.
    assert u[35, 19] == pytest.approx(K_NEXT * K_NEAR, abs=1e-6)
    assert u[36, 19] == pytest.approx(K_FAR * K_NEAR, abs=1e-6)
    assert u[43, 19] == pytest.approx(keys(31 / 16) * K_NEAR, abs=1e-7)   # 1.9375 cells: -0.00183
    assert u[44, 19] == pytest.approx(0.0, abs=1e-7)     # 2.0625 cells: outside the kernel
    # A ramp with the value g in cell g (x) becomes (i - 3.5) / 8 at pixel i, exactly, wherever
    # the kernel stays inside the grid (samples between cells 1 and 4: pixels 12 .. 35).
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32)[None, :, None], (6, 6, 1))
    row = np.asarray(decoding.upsample(ramp))[2, :, 0]
    i = np.arange(12, 36)
    np.testing.assert_allclose(row[i], (i - 3.5) / 8, atol=1e-5)


def test_argmax_joints_returns_x_then_y_on_a_non_square_map():
    maps = np.zeros((2, 4, 7, 3), np.float32)        # (B, H 4, W 7, P 3)
    maps[0, 2, 5, 0] = 0.9                            # x 5, y 2
    maps[0, 3, 0, 1] = 0.4                            # x 0, y 3
    maps[0, 0, 6, 2] = 0.7                            # x 6, y 0
    maps[1, 1, 3, :] = 2.0                            # x 3, y 1
    joints, peak = decoding.argmax_joints(maps)
    np.testing.assert_array_equal(joints[0], [[5, 2], [0, 3], [6, 0]])
    np.testing.assert_array_equal(joints[1], [[3, 1]] * 3)
    np.testing.assert_allclose(peak, [[0.9, 0.4, 0.7], [2.0, 2.0, 2.0]])


def test_stage_joints_are_crop_pixels_of_each_stage_without_the_background():
    # (B 1, T 2, 6 x 6 cells, P 2 + background); the background is largest everywhere and must
    # be ignored.
    beliefs = np.zeros((1, 2, 6, 6, 3), np.float32)
    beliefs[..., 2] = 5.0
    beliefs[0, 0, 1, 4, 0] = 1.0     # stage 1, part 0: cell x 4, y 1
    beliefs[0, 0, 4, 1, 1] = 1.0     # stage 1, part 1: cell x 1, y 4
    beliefs[0, 1, 2, 2, 0] = 0.5     # stage 2, part 0: cell x 2, y 2
    beliefs[0, 1, 3, 1, 1] = 0.5     # stage 2, part 1: cell x 1, y 3
    joints, peak = decoding.stage_joints(beliefs)
    assert joints.shape == (1, 2, 2, 2) and peak.shape == (1, 2, 2)
    cells = np.array([[[4, 1], [1, 4]], [[2, 2], [1, 3]]], np.float32)
    # 8 g + 3.5 +- 0.5: the two pixels nearest the cell centre tie (by symmetry).
    np.testing.assert_array_equal(np.abs(np.asarray(joints[0]) - (8 * cells + 3.5)), 0.5)
    np.testing.assert_allclose(peak[0, 0], K_NEAR ** 2, atol=1e-5)
    np.testing.assert_allclose(peak[0, 1], 0.5 * K_NEAR ** 2, atol=1e-5)


def test_a_perfect_target_map_decodes_to_its_joint_within_a_pixel_and_a_half():
    """belief_targets (sigma 7 px) of joints between the second and the second-last cell centres,
    decoded by stage_joints: the arg-max pixel is within 1.5 crop px (half a pixel of rounding plus
    the bicubic's bias between cells)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.uniform(11.5, 35.5, (14, 2)).astype(np.float32)     # 48 px crop: cells 1 .. 4
        maps = targets.belief_targets(xy, np.full(14, 2), 48).numpy()
        joints, _ = decoding.stage_joints(maps[None, None])
        assert np.abs(np.asarray(joints[0, 0]) - xy).max() <= 1.5


def test_crop_to_image_applies_each_examples_affine_by_hand():
    a = np.array([[[0.5, 0.0, 10.0], [0.0, 0.5, 20.0]],       # zoom x2 crop: p = q / 2 + (10, 20)
                  [[0.0, -2.0, 100.0], [2.0, 0.0, -4.0]]])    # p = (-2 y + 100, 2 x - 4)
    joints = np.array([[[[8.0, 6.0], [0.0, 0.0]]],                     # (B 2, T 1, P 2, 2)
                       [[[3.0, 5.0], [10.0, 40.0]]]])
    out = decoding.crop_to_image(joints, a)
    np.testing.assert_allclose(out, [[[[14.0, 23.0], [10.0, 20.0]]],
                                     [[[90.0, 2.0], [20.0, 16.0]]]])
    flat = decoding.crop_to_image(joints[:, 0], a)                     # (B, P, 2) too
    np.testing.assert_allclose(flat, out[:, 0])


def test_a_cell_decodes_to_its_original_pixel_through_a_canonical_crop():
    """Cell (5, 2) of a 64 px crop (8 x 8 cells) whose zoom is f = 0.5 around the person centre
    c = (100, 60): crop px q <-> original px p = c + (q - 31.5) / f (augment's crop_to_image
    without rotation; multiscale.crop_affine). Cell 5 -> q = 43.5 +- 0.5 -> p = 100 + 24 +- 1;
    cell 2 -> q = 19.5 +- 0.5 -> p = 60 - 24 +- 1."""
    f, c = 0.5, (100.0, 60.0)
    affine = np.array([[[1 / f, 0.0, c[0] - 31.5 / f], [0.0, 1 / f, c[1] - 31.5 / f]]])
    beliefs = np.zeros((1, 1, 8, 8, 15), np.float32)
    beliefs[0, 0, 2, 5, 6] = 1.0
    joints, _ = decoding.stage_joints(beliefs)
    image_px = decoding.crop_to_image(np.asarray(joints), affine)[0, 0, 6]
    np.testing.assert_array_equal(np.abs(image_px - (124.0, 36.0)), 1.0)


def test_eval_batches_affines_take_crop_joints_back_to_the_records_joints():
    config = tiny_config()          # synthetic: 64 px canvas, 32 px crops, zoom person_height x 32 / scale
    config.training.eval_batch_size = 4
    batches = list(pipeline.eval_batches(config, 1, "heldout", count=6))
    source = registry.open_split(config.data, "heldout")
    seen = 0
    for batch in batches:
        valid = batch["valid"][0]
        crop, affine, image_joints = batch["joints"][0], batch["crop_to_image"][0], batch["image_joints"][0]
        back = decoding.crop_to_image(crop[valid], affine[valid])
        np.testing.assert_allclose(back, image_joints[valid], atol=1.0)
        np.testing.assert_allclose(back, image_joints[valid], atol=1e-3)      # in fact exact
        assert np.abs(crop[valid] - image_joints[valid]).max() > 5, "the frames must differ for the test to bite"
        # The affine by hand: p = c + (q - (S - 1) / 2) / f, f = person_height x S / scale.
        for k in np.flatnonzero(valid):
            record = source.load(int(batch["index"][0][k]))
            np.testing.assert_allclose(image_joints[k], record["joints"])
            f = config.data.person_height * 32 / float(record["scale"])
            c = record["center"]
            want = [[1 / f, 0, c[0] - 15.5 / f], [0, 1 / f, c[1] - 15.5 / f]]
            np.testing.assert_allclose(affine[k], want, rtol=1e-5, atol=1e-3)
            seen += 1
    assert seen == 6
