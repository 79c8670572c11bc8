"""`MultiScalePredictor.predict`'s promise: joints in original pixels, 0-based, the centre of the
top-left pixel at (0, 0) (cpm_jax/evaluation/multiscale.py's docstring), checked by hand.

A fake network puts a single 1 in a chosen cell for a chosen part, whatever the image. With the
LSP image rule (`person_from_image`: c = ((W - 1) / 2, (H - 1) / 2), f = 0.8 S / H) at scale 1,
cell g is centred on crop px 8 g + 3.5 and crop px q is original px p = c + (q - (S - 1) / 2) / f,
so cell g -> p = c + (8 g + 3.5 - (S - 1) / 2) / f. The image sizes are chosen so that these
land on whole pixels, where the bicubic resampling of a single cell peaks exactly (value 1)."""
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax.evaluation import multiscale
from data_pipelines import skeleton

S = 80                                  # 10 x 10 cells
P = skeleton.LSP.num_joints
R_WRIST, L_ANKLE = skeleton.LSP.index["r_wrist"], skeleton.LSP.index["l_ankle"]


def cell_apply(last: dict, first: dict):
    """A fake CPM with 2 stages: stage 2 has a 1 at cell (x, y) = last[part], stage 1 at
    first[part]; 0 elsewhere. Crops (N, S, S, 3) uint8 -> (N, 2, 10, 10, P + 1), as the predictor's `apply_fn`."""
    def stage(cells):
        maps = np.zeros((S // 8, S // 8, P + 1), np.float32)
        for part, (gx, gy) in cells.items():
            maps[gy, gx, part] = 1.0
        return maps

    fixed = jnp.asarray(np.stack([stage(first), stage(last)]))

    def apply(variables, crops):
        assert crops.shape[1:] == (S, S, 3) and crops.dtype == jnp.uint8
        return jnp.broadcast_to(fixed, (crops.shape[0],) + fixed.shape)
    return apply


# (H, W), the last stage's cells {part: (gx, gy)}, the expected original px {part: (x, y)}.
CASES = {
    # H 72, W 120: f = 0.8 x 80 / 72 = 8/9, c = (59.5, 35.5); p = c + (8 g - 36) x 9/8 = c + 9 g - 40.5.
    # r_wrist cell (7, 2): x = 59.5 + 63 - 40.5 = 82, y = 35.5 + 18 - 40.5 = 13.
    # l_ankle cell (1, 6): x = 59.5 + 9 - 40.5 = 28, y = 35.5 + 54 - 40.5 = 49.
    "landscape_72x120": ((72, 120), {R_WRIST: (7, 2), L_ANKLE: (1, 6)}, {R_WRIST: (82, 13), L_ANKLE: (28, 49)}),
    # H 216, W 150: f = 64 / 216, 1/f = 3.375, c = (74.5, 107.5); p = c + 27 g - 121.5.
    # r_wrist cell (6, 2): x = 74.5 + 162 - 121.5 = 115, y = 107.5 + 54 - 121.5 = 40.
    # l_ankle cell (3, 7): x = 74.5 + 81 - 121.5 = 34, y = 107.5 + 189 - 121.5 = 175.
    "portrait_216x150": ((216, 150), {R_WRIST: (6, 2), L_ANKLE: (3, 7)}, {R_WRIST: (115, 40), L_ANKLE: (34, 175)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_cell_peak_comes_back_at_its_hand_worked_original_pixel(case):
    (height, width), cells, expected = CASES[case]
    person = multiscale.person_from_image(height, width, S)
    assert person.center == ((width - 1) / 2, (height - 1) / 2)
    assert person.base_factor == pytest.approx(0.8 * S / height)
    # Stage 1 points elsewhere: the prediction must come from the last stage.
    decoy = {part: (9 - gx, 9 - gy) for part, (gx, gy) in cells.items()}
    predictor = multiscale.MultiScalePredictor(cell_apply(cells, decoy), {}, S, 2, P,
                                               multiscale.Options(scales=(1.0,)))
    image = np.full((height, width, 3), 100, np.uint8)
    joints, peak = predictor.predict(image, person)
    assert joints.shape == (1, P, 2) and peak.shape == (1, P)
    for part, xy in expected.items():
        np.testing.assert_allclose(joints[0, part], xy, atol=1.0, err_msg=f"part {part}")
        np.testing.assert_allclose(joints[0, part], xy, atol=1e-6,
                                   err_msg=f"part {part}: the peak lies on a whole pixel")
        assert peak[0, part] == pytest.approx(1.0, abs=1e-5)
    # The same cells through the frame formula of the docstring (cell_geometry, continuous
    # coordinates): u_orig = (8 / f) u_cell + c + 0.5 - S / (2 f), with u = px + 0.5.
    geometry = multiscale.cell_geometry(person.center, person.base_factor, S)
    for part, (gx, gy) in cells.items():
        u = geometry[0] * (np.array([gx, gy]) + 0.5) + geometry[1]
        np.testing.assert_allclose(u - 0.5, expected[part], atol=1e-3)
