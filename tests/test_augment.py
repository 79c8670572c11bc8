"""Augmentation geometry: image and joints move together; flips swap left and right."""
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import augment, skeleton, targets
from tests.conftest import tiny_config

SIZE = 64


def dotted_example(rng, shape=(120, 160)):
    """A black image with a white 5x5 dot at each of 14 random joints, 24 px apart and 16 px from
    the border, so that even shrunk and blurred each dot stands alone."""
    h, w = shape
    joints = []
    while len(joints) < 14:
        p = rng.uniform([16, 16], [w - 16, h - 16])
        if all(np.hypot(*(p - q)) > 24 for q in joints):
            joints.append(np.round(p))
    joints = np.array(joints, np.float32)
    image = np.zeros((h, w, 3), np.uint8)
    for x, y in joints.astype(int):
        image[y - 2:y + 3, x - 2:x + 3] = 255
    return {"image": tf.constant(image), "joints": tf.constant(joints),
            "visibility": tf.constant(np.full(14, 2, np.int32)),
            "center": tf.constant(np.array([w / 2, h / 2], np.float32)), "scale": tf.constant(160.0),
            "others_joints": tf.zeros([0, 14, 2]), "others_visibility": tf.zeros([0, 14], tf.int32)}


def inside(joints, margin=5):
    return np.all((joints >= margin) & (joints <= SIZE - 1 - margin), axis=-1)


@pytest.mark.parametrize("seed", range(8))
def test_random_crop_keeps_dots_on_joints_and_peaks_within_one_cell(seed):
    data = tiny_config().data
    data.person_height = 0.9
    example = dotted_example(np.random.default_rng(seed))
    crop = augment.train_crop(example, tf.constant([7, seed], tf.int64), data, SIZE, skeleton.FLIP_PERMUTATION)
    image, joints, vis = crop["image"].numpy(), crop["joints"].numpy(), crop["visibility"]
    ok = inside(joints)
    assert ok.sum() >= 4, "the crop should keep several joints"
    for x, y in joints[ok]:
        # The dot, however blurred by resampling, is centred on its joint.
        cx, cy = int(round(x)), int(round(y))
        window = image[cy - 2:cy + 3, cx - 2:cx + 3].mean(-1)
        offsets = np.arange(-2, 3)
        centroid = np.array([(window.sum(0) * offsets).sum(), (window.sum(1) * offsets).sum()]) / window.sum()
        assert window.max() > 60
        np.testing.assert_allclose(centroid + (cx, cy), (x, y), atol=1.0)
    maps = targets.belief_targets(joints, vis, SIZE).numpy()
    for p in np.flatnonzero(ok):
        cy, cx = np.unravel_index(np.argmax(maps[..., p]), maps.shape[:2])
        assert abs(cx - (joints[p, 0] - 3.5) / 8) <= 1 and abs(cy - (joints[p, 1] - 3.5) / 8) <= 1


@pytest.mark.parametrize("flip", [False, True])
def test_crop_to_image_inverts_the_crop(flip):
    example = dotted_example(np.random.default_rng(3))
    crop = augment.crop_example(example, SIZE, 0.8, 25.0, tf.constant(flip), skeleton.FLIP_PERMUTATION)
    affine = crop["crop_to_image"].numpy()
    back = crop["joints"].numpy() @ affine[:, :2].T + affine[:, 2]
    original = example["joints"].numpy()
    if flip:
        original = original[list(skeleton.FLIP_PERMUTATION)]
    np.testing.assert_allclose(back, original, atol=1e-3)


def test_flip_mirrors_image_and_swaps_left_right():
    example = dotted_example(np.random.default_rng(4))
    plain = augment.crop_example(example, SIZE, 0.7, 10.0, tf.constant(False), skeleton.FLIP_PERMUTATION)
    flipped = augment.crop_example(example, SIZE, 0.7, 10.0, tf.constant(True), skeleton.FLIP_PERMUTATION)
    np.testing.assert_allclose(flipped["image"].numpy(), plain["image"].numpy()[:, ::-1])
    r_wrist, l_wrist = skeleton.JOINT_INDEX["r_wrist"], skeleton.JOINT_INDEX["l_wrist"]
    plain_joints, flipped_joints = plain["joints"].numpy(), flipped["joints"].numpy()
    np.testing.assert_allclose(flipped_joints[l_wrist], [SIZE - 1 - plain_joints[r_wrist, 0],
                                                         plain_joints[r_wrist, 1]], atol=1e-4)
    neck = skeleton.JOINT_INDEX["neck"]
    assert flipped_joints[neck, 0] == pytest.approx(SIZE - 1 - plain_joints[neck, 0], abs=1e-4)


def test_flip_of_flip_is_identity():
    example = dotted_example(np.random.default_rng(5))
    crop = augment.crop_example(example, SIZE, 0.9, -30.0, None, None)
    perm = skeleton.FLIP_PERMUTATION
    twice = augment.flip_crop(augment.flip_crop(crop, SIZE, perm), SIZE, perm)
    once = augment.flip_crop(crop, SIZE, perm)
    assert not np.allclose(once["joints"].numpy(), crop["joints"].numpy())
    for key in crop:
        np.testing.assert_allclose(twice[key].numpy(), crop[key].numpy(), atol=1e-5)


def test_flip_permutation_pairs_left_and_right():
    perm = skeleton.FLIP_PERMUTATION
    assert sorted(perm) == list(range(14))
    assert all(perm[perm[i]] == i for i in range(14))
    for i, name in enumerate(skeleton.JOINT_NAMES):
        other = skeleton.JOINT_NAMES[perm[i]]
        assert other == name.replace("r_", "L").replace("l_", "r_").replace("L", "l_")


def test_eval_crop_puts_the_person_at_canonical_size_in_the_centre():
    data = tiny_config().data
    example = dotted_example(np.random.default_rng(6))
    joints = augment.eval_crop(example, data, SIZE)["joints"]
    factor = data.person_height * SIZE / 160.0
    spread = np.ptp(example["joints"].numpy(), axis=0) * factor
    np.testing.assert_allclose(np.ptp(joints.numpy(), axis=0), spread, rtol=0.03)
    centre = (example["center"].numpy() + 0.5) * factor - 0.5
    np.testing.assert_allclose(joints.numpy().mean(0) - (SIZE - 1) / 2,
                               ((example["joints"].numpy() + 0.5) * factor - 0.5).mean(0) - centre, rtol=0.03, atol=0.6)
