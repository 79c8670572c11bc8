"""Training augmentation through the real pipeline (`pipeline.train_examples`): a flip swaps left
and right labels as well as pixels, and the random rotation, scale and flip are drawn from the
release's ranges (docs/paper_notes.md section 4: U[-40, 40] degrees, x U[0.7, 1.3], flip p = 0.5).

Each test feeds one hand-made record (a 64 x 64 image) through `train_examples` by standing in
for `registry.open_split`, so the numbers below can be worked out by hand:
with `data.person_height` = 1 and the record's scale = S = 64 px, the canonical zoom is 1; the
person centre (31.5, 31.5) is the image centre and the crop centre ((S - 1) / 2), so without
rotation, scale or flip crop px = original px. A flip mirrors x' = S - 1 - x (augment.flip_crop)."""
import math

import numpy as np
import pytest

from data_pipelines import pipeline, records, registry, skeleton, sources
from tests import images
from tests.conftest import tiny_config

S = 64
IDX = skeleton.LSP.index
P = skeleton.LSP.num_joints


def one_record_source(tmp_path, image: np.ndarray, joints: dict, center=(31.5, 31.5), scale: float = S):
    """A one-example split read as any dataset is (records.make, sources.from_annotations): the
    PNG `image`, `joints` {name: (x, y)} labelled (visibility 2), every other joint unlabelled."""
    xy = np.zeros((1, P, 2), np.float32)
    visibility = np.zeros((1, P), np.int32)
    for name, point in joints.items():
        xy[0, IDX[name]] = point
        visibility[0, IDX[name]] = 2
    path = images.write(tmp_path / "im.png", images.encode(image, "PNG"))
    return sources.from_annotations(records.make("hand-made", [path], xy, visibility, [center], [scale]))


def config_for(monkeypatch, source, **data):
    config = tiny_config(input_size=S)
    config.data.person_height = 1.0          # canonical zoom = person_height x S / scale = 1
    for key, value in data.items():
        config.data[key] = value
    monkeypatch.setattr(registry, "open_split", lambda *args, **kwargs: source)
    return config


def examples(config, count: int) -> list[dict]:
    return list(pipeline.train_examples(config).take(count).as_numpy_iterator())


def cell_of(example: dict, part: int) -> tuple[int, int]:
    """(column, row) of the arg-max cell of `part`'s target map."""
    maps = example["targets"][..., part]
    row, col = np.unravel_index(np.argmax(maps), maps.shape)
    return int(col), int(row)


# ---------------------------------------------------------------------------------------------
# A flip swaps left and right labels.

R_WRIST, L_ANKLE = (12.0, 20.0), (40.0, 50.0)


def dotted_image() -> np.ndarray:
    """Black, with a white 3 x 3 dot on the right wrist only."""
    image = np.zeros((S, S, 3), np.uint8)
    x, y = (int(v) for v in R_WRIST)
    image[y - 1:y + 2, x - 1:x + 2] = 255
    return image


@pytest.mark.parametrize("flip", [False, True])
def test_a_flip_moves_the_right_wrist_pixels_and_label_to_the_left_wrist(tmp_path, monkeypatch, flip):
    source = one_record_source(tmp_path, dotted_image(), {"r_wrist": R_WRIST, "l_ankle": L_ANKLE})
    config = config_for(monkeypatch, source, flip_probability=1.0 if flip else 0.0,
                        max_rotation=0.0, scale_range=(1.0, 1.0))
    example = examples(config, 1)[0]
    joints, vis, maps, image = example["joints"], example["visibility"], example["targets"], example["image"]
    white, black = 255 / 256 - 0.5, -0.5
    if not flip:
        # Control: crop px = original px, labels unchanged.
        np.testing.assert_allclose(joints[IDX["r_wrist"]], R_WRIST, atol=1e-3)
        assert vis[IDX["r_wrist"]] == 2 and vis[IDX["l_wrist"]] == 0
        assert image[20, 12].mean() == pytest.approx(white, abs=0.02)
        return
    # Mirror by hand: x' = S - 1 - x. The right wrist (12, 20) becomes the LEFT wrist at (51, 20);
    # the left ankle (40, 50) becomes the RIGHT ankle at (23, 50).
    np.testing.assert_allclose(joints[IDX["l_wrist"]], (51.0, 20.0), atol=1e-3)
    np.testing.assert_allclose(joints[IDX["r_ankle"]], (23.0, 50.0), atol=1e-3)
    assert vis[IDX["l_wrist"]] == 2 and vis[IDX["r_ankle"]] == 2
    assert vis[IDX["r_wrist"]] == 0 and vis[IDX["l_ankle"]] == 0, "the original sides must be unlabelled"
    # The pixels moved with the label: the dot is now at (51, 20), nothing is left at (12, 20).
    assert image[20, 51].mean() == pytest.approx(white, abs=0.02)
    assert image[20, 12].mean() == pytest.approx(black, abs=0.02)
    # Target maps (cell g centred on 3.5 + 8 g): x 51 -> cell 6 (51.5), y 20 -> cell 2 (19.5);
    # x 23 -> cell 2 (19.5), y 50 -> cell 6 (51.5).
    assert cell_of(example, IDX["l_wrist"]) == (6, 2)
    assert cell_of(example, IDX["r_ankle"]) == (2, 6)
    # Peak value: d^2 = 0.5^2 + 0.5^2 px^2 from the cell centre, sigma 7: exp(-0.5 / 98).
    assert maps[2, 6, IDX["l_wrist"]] == pytest.approx(math.exp(-0.5 / 98), abs=1e-5)
    # d^2 = 3.5^2 + 1.5^2 = 14.5 for the ankle at (23, 50) from (19.5, 51.5).
    assert maps[6, 2, IDX["r_ankle"]] == pytest.approx(math.exp(-14.5 / 98), abs=1e-5)
    # The original sides' channels carry no peak at all.
    assert maps[..., IDX["r_wrist"]].max() == 0 and maps[..., IDX["l_ankle"]].max() == 0


# ---------------------------------------------------------------------------------------------
# The random rotation, scale and flip come from the configured ranges, both signs.

ARM = 20.0   # neck at the person centre, right wrist ARM px to its right


def draws(tmp_path, monkeypatch, count: int, **data) -> np.ndarray:
    """(count, 3) [angle (deg), zoom, flipped] recovered from the crops' joints.

    The neck sits on the person centre, so it lands on the crop centre; the wrist vector
    v = (ARM, 0) becomes w = zoom x R(angle) v, with R = [[cos, sin], [-sin, cos]]
    (augment._rotation), its x negated when flipped; a flip also relabels r_wrist as l_wrist."""
    image = np.full((S, S, 3), 90, np.uint8)
    source = one_record_source(tmp_path, image, {"neck": (31.5, 31.5), "r_wrist": (31.5 + ARM, 31.5)})
    config = config_for(monkeypatch, source, **data)
    out = []
    for example in examples(config, count):
        joints, vis = example["joints"], example["visibility"]
        np.testing.assert_allclose(joints[IDX["neck"]], ((S - 1) / 2, (S - 1) / 2), atol=1e-3)
        flipped = bool(vis[IDX["l_wrist"]] > 0)
        assert flipped != bool(vis[IDX["r_wrist"]] > 0)
        w = joints[IDX["l_wrist" if flipped else "r_wrist"]] - joints[IDX["neck"]]
        if flipped:
            w = w * [-1.0, 1.0]
        out.append((math.degrees(math.atan2(-w[1], w[0])), np.hypot(*w) / ARM, flipped))
    return np.array(out, np.float64)


def test_paper_augmentation_draws_span_both_signs_of_the_rotation_and_the_whole_scale_range(tmp_path, monkeypatch):
    data = tiny_config().data       # the paper's ranges (configs.paper_data)
    assert tuple(data.scale_range) == (0.7, 1.3) and data.max_rotation == 40.0
    assert data.flip_probability == 0.5
    d = draws(tmp_path, monkeypatch, 96)
    angle, zoom, flipped = d[:, 0], d[:, 1], d[:, 2]
    assert np.all(np.abs(angle) <= 40.0 + 1e-3), angle
    # U[-40, 40]: 96 draws; each check fails by chance with probability < 1e-8.
    assert angle.min() < -20.0 and angle.max() > 20.0, (angle.min(), angle.max())
    assert (angle < 0).sum() >= 25 and (angle > 0).sum() >= 25
    assert abs(angle.mean()) < 10.0
    # x U[0.7, 1.3] on top of the canonical zoom 1.
    assert np.all((zoom >= 0.7 - 1e-4) & (zoom <= 1.3 + 1e-4)), zoom
    assert zoom.min() < 0.8 and zoom.max() > 1.2, (zoom.min(), zoom.max())
    assert abs(zoom.mean() - 1.0) < 0.07
    # p = 0.5.
    assert 0.25 <= flipped.mean() <= 0.75, flipped.mean()


def test_the_configured_ranges_are_the_ones_drawn_from(tmp_path, monkeypatch):
    d = draws(tmp_path, monkeypatch, 64, max_rotation=10.0, scale_range=(0.9, 1.2), flip_probability=0.0)
    angle, zoom, flipped = d[:, 0], d[:, 1], d[:, 2]
    assert np.all(np.abs(angle) <= 10.0 + 1e-3) and angle.min() < -5.0 and angle.max() > 5.0
    assert np.all((zoom >= 0.9 - 1e-4) & (zoom <= 1.2 + 1e-4)) and zoom.min() < 0.95 and zoom.max() > 1.15
    assert not flipped.any()
    fixed = draws(tmp_path, monkeypatch, 8, max_rotation=0.0, scale_range=(1.0, 1.0), flip_probability=1.0)
    np.testing.assert_allclose(fixed[:, :2], [[0.0, 1.0]] * 8, atol=1e-3)
    assert fixed[:, 2].all()
