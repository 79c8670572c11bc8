"""The multi-scale test-time procedure (cpm_jax/evaluation/multiscale.py, docs/paper_notes.md
section 5) on a fake network whose belief maps are built from markers painted into the image, so
the right answer is known: every part's arg-max must land on its marker's original pixel, at
every scale alone and summed, with padding (a person at the border), on non-square images, with
flip testing and in batches."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cpm_jax import errors
from cpm_jax.evaluation import decoding, multiscale
from data_pipelines import augment, registry, skeleton

S = 96                  # input size: 12 x 12 cells
T = 2                   # fake stages; stage t's peaks are t / T high
P = skeleton.LSP.num_joints
LEGS = np.arange(P) < 6                     # r/l ankle, knee, hip: the red marker
SIDES = np.array([n.startswith("r_") for n in skeleton.LSP.joint_names])  # right: red
PERM = skeleton.LSP.flip_permutation


def marker_apply(red_parts: np.ndarray, sigma_cells: float = 1.5):
    """A fake CPM: the centroid q (crop px) of each marker colour (red: R - G, blue: B - G; grey
    and black give 0) becomes a Gaussian on the cell grid at (q - 3.5) / 8; parts in `red_parts`
    follow the red marker, the others the blue one. The predictor's `apply_fn`: crops uint8
    (N, S, S, 3) -> (N, T, h, w, P+1) like `multiscale.crop_network`."""
    def apply(variables, crops):
        assert crops.shape[1:] == (S, S, 3) and crops.dtype == jnp.uint8
        x = crops.astype(jnp.float32)
        coords = jnp.arange(x.shape[1], dtype=jnp.float32)
        cells = jnp.arange(x.shape[1] // 8, dtype=jnp.float32)
        maps = []
        for channel in (0, 2):
            w = jax.nn.relu(x[..., channel] - x[..., 1])                     # (N, S, S)
            total = jnp.maximum(w.sum((1, 2)), 1e-6)
            qx = (w * coords[None, None, :]).sum((1, 2)) / total
            qy = (w * coords[None, :, None]).sum((1, 2)) / total
            gx, gy = (qx - 3.5) / 8, (qy - 3.5) / 8
            d2 = (cells[None, None, :] - gx[:, None, None]) ** 2 + (cells[None, :, None] - gy[:, None, None]) ** 2
            maps.append(jnp.exp(-d2 / (2 * sigma_cells ** 2)))
        red, blue = maps
        parts = jnp.where(jnp.asarray(red_parts)[None, None, None, :], red[..., None], blue[..., None])
        stages = [parts * (t / T) for t in range(1, T + 1)]
        stages = [jnp.concatenate([s, 1 - s.max(-1, keepdims=True)], -1) for s in stages]
        return jnp.stack(stages, axis=1)
    return apply


def painted(height: int, width: int, red, blue, sigma: float = 2.5) -> np.ndarray:
    """A black (H, W, 3) image with a red and a blue Gaussian blob centred on (x, y) pixels."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for channel, (x, y) in ((0, red), (2, blue)):
        image[..., channel] = 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.round(image).astype(np.uint8)


def predictor(red_parts=LEGS, **options) -> multiscale.MultiScalePredictor:
    return multiscale.MultiScalePredictor(marker_apply(red_parts), {}, S, T, P,
                                         multiscale.Options(**options), PERM)


def expected(red, blue) -> np.ndarray:
    return np.where(LEGS[:, None], np.asarray(red, float)[None], np.asarray(blue, float)[None])


# Non-square images; people near a border so that the crops are padded with grey.
CASES = {
    "left_border_landscape": dict(size=(90, 130), person=((15.0, 45.0), 1.5), red=(22, 38), blue=(8, 55)),
    "bottom_right_portrait": dict(size=(150, 70), person=((60.0, 140.0), 1.3), red=(55, 130), blue=(66, 145)),
    "centre_small_zoom": dict(size=(120, 100), person=((50.0, 60.0), 0.6), red=(40, 35), blue=(70, 90)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_scale_alone_and_the_sum_find_the_markers(case):
    c = CASES[case]
    height, width = c["size"]
    image = painted(height, width, c["red"], c["blue"])
    person = multiscale.Person(*c["person"])
    want = expected(c["red"], c["blue"])
    # The crops really are padded at the smallest zoom (grey fill beyond the image).
    crop = multiscale.prepare(image, multiscale.Person(person.center, person.base_factor * 0.7), (1.0,), S).crops[0]
    assert (crop == 128).all(-1).any(), "the case should pad"
    for scales in [(m,) for m in multiscale.PAPER_SCALES] + [multiscale.PAPER_SCALES]:
        joints, peak = predictor(scales=scales).predict(image, person)
        assert joints.shape == (1, P, 2) and peak.shape == (1, P)
        error = np.abs(joints[0] - want).max()
        assert error <= 1.0, (scales, error, joints[0], want)
        assert np.all(peak > 0.9), (scales, peak)          # the last stage's peak is 1


def test_stages_are_selectable_and_in_order():
    c = CASES["left_border_landscape"]
    image = painted(*c["size"], c["red"], c["blue"])
    joints, peak = predictor(stages=(2, 1)).predict(image, multiscale.Person(*c["person"]))
    assert joints.shape == (2, P, 2)
    np.testing.assert_allclose(peak[0], 1.0, atol=0.05)
    np.testing.assert_allclose(peak[1], 0.5, atol=0.03)
    np.testing.assert_array_equal(joints[0], joints[1])
    assert multiscale.parse_stages("all", 3) == (1, 2, 3)
    assert multiscale.parse_stages("last", 3) == (3,)
    assert multiscale.parse_stages("1,3", 3) == (1, 3)
    for bad in ("0", "4", "x", ""):
        with pytest.raises(ValueError, match="stages"):
            multiscale.parse_stages(bad, 3)
    with pytest.raises(ValueError, match="stages 1..2"):
        predictor(stages=(3,))
    assert multiscale.parse_scales("0.7, 1,1.3") == (0.7, 1.0, 1.3)
    with pytest.raises(ValueError, match="scales"):
        multiscale.parse_scales("0.7,-1")


def test_flip_testing_mirrors_back_and_swaps_left_and_right():
    c = CASES["centre_small_zoom"]           # markers far apart: their peaks do not overlap
    image = painted(*c["size"], c["red"], c["blue"])
    person = multiscale.Person(*c["person"])
    # A left/right-symmetric fake (legs red, the rest blue): flipping changes nothing.
    plain, plain_peak = predictor().predict(image, person)
    flipped, flipped_peak = predictor(flip=True).predict(image, person)
    assert np.abs(flipped - plain).max() <= 1.0
    np.testing.assert_allclose(flipped_peak, plain_peak, atol=0.02)
    # A fake that tells sides by colour (right parts red): the flipped image's "right" maps are
    # the blue marker, so after the swap every sided part averages the two markers (peak ~0.5);
    # without the swap (or without mirroring back) they would differ.
    _, sided_peak = predictor(red_parts=SIDES, flip=True).predict(image, person)
    sided = np.array([n[:2] in ("r_", "l_") for n in skeleton.LSP.joint_names])
    assert np.all(sided_peak[0, sided] < 0.6) and np.all(sided_peak[0, sided] > 0.45)
    assert np.all(sided_peak[0, ~sided] > 0.9)              # neck, head top: blue in both
    with pytest.raises(ValueError, match="flip permutation"):
        multiscale.MultiScalePredictor(marker_apply(LEGS), {}, S, T, P, multiscale.Options(flip=True))


def test_subpixel_refinement_moves_towards_a_fractional_marker():
    red, blue = (40.3, 52.6), (61.7, 45.2)
    image = painted(100, 110, red, blue, sigma=3.0)
    person = multiscale.Person((50.0, 50.0), 1.4)
    want = expected(red, blue)
    coarse, _ = predictor().predict(image, person)
    fine, _ = predictor(subpixel=True).predict(image, person)
    assert np.all(coarse == np.round(coarse))                # integer pixels by default
    assert np.abs(fine[0] - want).max() < 0.45
    assert np.abs(fine[0] - want).mean() < np.abs(coarse[0] - want).mean()


def test_batches_with_padding_and_mixed_sizes_match_one_at_a_time():
    items = []
    for name in sorted(CASES):
        c = CASES[name]
        items.append((painted(*c["size"], c["red"], c["blue"]), multiscale.Person(*c["person"]),
                      expected(c["red"], c["blue"])))
    single = predictor(scales=(0.8, 1.2))
    batched = predictor(scales=(0.8, 1.2), batch_size=2, canvas_multiple=32)
    finished = []
    loaders = [lambda item=item, i=i: (item[0], item[1], i) for i, item in enumerate(items)]
    loaders.insert(1, lambda: None)                          # a skipped (bad) example
    out = list(batched.run(loaders, workers=2, on_batch=finished.append))
    assert [extra for extra, _, _ in out] == [0, 1, 2]
    assert finished[-1] == 3
    for (i, joints, peak), (image, person, want) in zip(out, items):
        ref_joints, ref_peak = single.predict(image, person)
        np.testing.assert_array_equal(joints, ref_joints)
        np.testing.assert_allclose(peak, ref_peak, atol=1e-5)
        assert np.abs(joints[-1] - want).max() <= 1.0


def test_crops_and_geometry_are_training_s():
    """crop_affine and the crops equal augment.crop_example (no rotation, no flip); cell centres
    map through cell_geometry where crop_affine sends crop pixel 8g + 3.5."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    center, factor = np.array([20.0, 61.5]), 1.37
    example = {"image": tf.constant(image), "center": tf.constant(center, tf.float32),
               "joints": tf.zeros((P, 2)), "visibility": tf.zeros((P,), tf.int32),
               "others_joints": tf.zeros((0, P, 2)), "others_visibility": tf.zeros((0, P), tf.int32)}
    crop = augment.crop_example(example, S, factor, 0.0, None, None)
    np.testing.assert_allclose(multiscale.crop_affine(center, factor, S), crop["crop_to_image"].numpy(), atol=1e-5)
    prepared = multiscale.prepare(image, multiscale.Person(tuple(center), factor), (1.0,), S)
    # The same warp; only float32 (training's TF affine) vs float64 rounding: at most 1 level.
    difference = np.abs(prepared.crops[0].astype(int) - crop["image"].numpy().astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    geometry = multiscale.cell_geometry(center, factor, S)
    g = np.arange(S // 8, dtype=np.float64)
    via_cells = geometry[0][:, None] * (g + 0.5) + geometry[1][:, None] - 0.5      # (2, h): x, y
    q = np.stack([8 * g + 3.5, 8 * g + 3.5], -1)
    via_crop = decoding.crop_to_image(q[None], multiscale.crop_affine(center, factor, S)[None])[0].T
    np.testing.assert_allclose(via_cells, via_crop, atol=1e-4)


def test_resampling_is_edge_replicated_bicubic_inside_the_input_and_zero_outside():
    """resample_sum = jax.image.scale_and_translate (Keys cubic) of the maps edge-padded by 2 cells
    (what OpenCV and MATLAB do at borders), summed over k, and 0 where the input does not reach."""
    maps = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 3)), jnp.float32)
    scale = jnp.array([[3.3, 3.3], [5.0, 5.0]])
    translation = jnp.array([[-5.23, 7.17], [10.01, -3.03]])  # no pixel centre on an edge
    summed = np.asarray(decoding.resample_sum(maps, scale, translation, (40, 50)))
    reference, covered = 0, np.zeros((40, 50), bool)
    for k in range(2):
        padded = jnp.pad(maps[k], ((2, 2), (2, 2), (0, 0)), mode="edge")
        resized = jax.image.scale_and_translate(padded, (40, 50, 3), (0, 1), scale[k, ::-1],
                                                translation[k, ::-1] - 2 * scale[k, ::-1], "cubic",
                                                antialias=False)
        # Output pixel centres whose sample point lies within the input's 8 x 8 cells.
        u = (np.arange(50) + 0.5 - float(translation[k, 0])) / float(scale[k, 0])
        v = (np.arange(40) + 0.5 - float(translation[k, 1])) / float(scale[k, 1])
        inside = ((v >= 0) & (v <= 8))[:, None] & ((u >= 0) & (u <= 8))[None, :]
        reference = reference + np.where(inside[..., None], np.asarray(resized), 0.0)
        covered |= inside
    np.testing.assert_allclose(summed, np.asarray(reference), atol=1e-5)
    assert covered.any() and (~covered).any()
    np.testing.assert_array_equal(summed[~covered], 0.0)


def test_person_rules():
    data = ml_collections.ConfigDict({"person_height": 41 / 35 * 200 / 368})
    lsp = multiscale.person_from_image(200, 120, 368)
    assert lsp.center == (59.5, 99.5) and lsp.base_factor == pytest.approx(0.8 * 368 / 200)
    # MPII: 1.171 / annotated scale, records' scale being 200 x MPII's.
    record = {"image": np.zeros((50, 40, 3), np.uint8), "center": np.array([10.0, 20.0]),
              "scale": np.float32(200 * 2.5)}
    mpii = multiscale.person_for_record(record, data, 368, "annotated")
    assert mpii.center == (10.0, 20.0) and mpii.base_factor == pytest.approx(41 / 35 / 2.5)
    image_rule = multiscale.person_for_record(record, data, 368, "image")
    assert image_rule.center == (19.5, 24.5) and image_rule.base_factor == pytest.approx(0.8 * 368 / 50)
    assert registry.get("lsp").person_rule == "image" and registry.get("lsp+lspet").person_rule == "image"
    assert registry.get("mpii").person_rule == "annotated" and registry.get("flic").person_rule == "annotated"


def test_place_person_refuses_what_cannot_be_right():
    """A centre outside the image, or an image too small to hold a person, is an error, never a
    silent prediction of every joint at (0, 0)."""
    data = ml_collections.ConfigDict({"person_height": 41 / 35 * 200 / 368})
    person, how = multiscale.place_person((100, 60, 3), data, 368, center=(59.5, 0))   # on the edge: fine
    assert person.center == (59.5, 0.0) and person.base_factor == pytest.approx(0.8 * 368 / 100)
    assert "given centre" in how
    person, _ = multiscale.place_person((100, 60, 3), data, 368, scale_px=200.0)
    assert person.center == (29.5, 49.5) and person.base_factor == pytest.approx(41 / 35 * 200 / 368 * 368 / 200)
    for center in ((60.5, 10), (-1, 10), (10, 100)):
        with pytest.raises(errors.InputError, match="outside the 60x100 image"):
            multiscale.place_person((100, 60, 3), data, 368, center=center)
    with pytest.raises(errors.InputError, match="1x1 image is too small"):
        multiscale.place_person((1, 1, 3), data, 368)
    with pytest.raises(ValueError, match="positive"):
        multiscale.person_from_scale((0, 0), 0.0, data, 368)
