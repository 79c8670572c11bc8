"""Crop geometry of training and evaluation (docs/paper_notes.md section 4), in TensorFlow.

An example is a record (sources.py): image uint8 (H, W, 3); joints float32 (P, 2), (x, y)
pixels, 0-based, integer values at pixel centres; visibility int32 (P,) (COCO: 0 not labelled);
center float32 (2,) person centre, pixels; scale float32 () person size, pixels; others_joints
(K, P, 2) and others_visibility (K, P), the other people of the image.

Training, in the release's order: (1) scale so the person is `person_height` x input size tall,
times U[scale_range]; (2) rotate by U[-max_rotation, max_rotation] degrees about the person
centre; (3) crop/pad the input-size window centred on it, grey 128 fill; (4) flip with
`flip_probability`, swapping left and right joints. Steps 1-3 are one affine map, applied to the
image with a single bicubic resampling (PIL; the release used OpenCV's bicubic resize and warp)
and to every person's joints, so labels stay on the body.
"""
import math

import ml_collections
import numpy as np
from PIL import Image

from cpm_jax import tf_loader

tf = tf_loader.import_tensorflow()
GREY = 128


def _rotation(angle_deg):
    """2x2 matrix rotating image points (y down) by `angle_deg`, counter-clockwise as displayed."""
    a = angle_deg * (math.pi / 180.0)
    c, s = tf.cos(a), tf.sin(a)
    return tf.reshape(tf.stack([c, s, -s, c]), [2, 2])


def bicubic_warp(image: np.ndarray, crop_to_image: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 crop whose pixel q samples `image` at crop_to_image @ [q, 1].

    Both frames have pixel centres at integers; PIL's have them at +0.5, hence the shift."""
    a = crop_to_image.astype(np.float64)
    shift = a[:, 2] + 0.5 - a[:, :2] @ np.array([0.5, 0.5])
    coefficients = (a[0, 0], a[0, 1], shift[0], a[1, 0], a[1, 1], shift[1])
    crop = Image.fromarray(image).transform((size, size), Image.Transform.AFFINE, coefficients,
                                            resample=Image.Resampling.BICUBIC, fillcolor=(GREY,) * 3)
    return np.asarray(crop)


def crop_example(example, input_size: int, factor, angle_deg, flip, flip_permutation) -> dict:
    """Scale by `factor`, rotate by `angle_deg` about the person centre, crop, optionally flip.

    Returns a dict: image float32 (S, S, 3) in [0, 255]; joints (P, 2) and others_joints
    (K, P, 2) in crop pixels; visibility (P,) and others_visibility (K, P), relabelled by a flip;
    crop_to_image float32 (2, 3), the affine map from crop pixels back to original pixels.
    """
    factor = tf.cast(factor, tf.float32)
    to_scaled = lambda p: (p + 0.5) * factor - 0.5  # original -> scaled pixels (half-pixel centres)
    centre = to_scaled(example["center"])
    crop_centre = tf.fill([2], (input_size - 1) / 2.0)
    rot = _rotation(tf.cast(angle_deg, tf.float32))
    # crop point q = rot @ (scaled p - centre) + crop_centre; its inverse maps q -> original p.
    inv = tf.transpose(rot)
    offset = centre - tf.linalg.matvec(inv, crop_centre)
    crop_to_image = tf.concat([inv / factor, ((offset + 0.5) / factor - 0.5)[:, None]], axis=1)
    to_crop = lambda p: tf.einsum("ij,...j->...i", rot, to_scaled(p) - centre) + crop_centre
    image = tf.numpy_function(bicubic_warp, [example["image"], crop_to_image, input_size], tf.uint8,
                              stateful=False)
    crop = {
        "image": tf.cast(tf.ensure_shape(image, [input_size, input_size, 3]), tf.float32),
        "joints": to_crop(example["joints"]),
        "visibility": example["visibility"],
        "others_joints": to_crop(example["others_joints"]),
        "others_visibility": example["others_visibility"],
        "crop_to_image": crop_to_image,
    }
    if flip is None:
        return crop
    return tf.cond(flip, lambda: flip_crop(crop, input_size, flip_permutation), lambda: crop)


def flip_crop(crop: dict, input_size: int, flip_permutation) -> dict:
    """Horizontal flip of a crop: mirror x, relabel left <-> right, adjust crop_to_image."""
    perm = list(flip_permutation)
    mirror = lambda joints: tf.gather(joints, perm, axis=-2) * [-1.0, 1.0] + [input_size - 1.0, 0.0]
    # original = A @ [x, y, 1] with x = S-1-x'  =>  negate A's x column, shift by (S-1) x column.
    a = crop["crop_to_image"]
    return {
        "image": tf.reverse(crop["image"], axis=[1]),
        "joints": mirror(crop["joints"]),
        "visibility": tf.gather(crop["visibility"], perm, axis=-1),
        "others_joints": mirror(crop["others_joints"]),
        "others_visibility": tf.gather(crop["others_visibility"], perm, axis=-1),
        "crop_to_image": tf.stack([-a[:, 0], a[:, 1], a[:, 2] + (input_size - 1.0) * a[:, 0]], axis=1),
    }


def canonical_factor(example, data: ml_collections.ConfigDict, input_size: int):
    """Image scale that makes the person `data.person_height` x input size tall."""
    return data.person_height * input_size / example["scale"]


def train_crop(example, seed, data: ml_collections.ConfigDict, input_size: int, flip_permutation) -> dict:
    """Random scale, rotation and flip drawn statelessly from `seed` (shape (2,) int)."""
    u = tf.random.stateless_uniform([3], seed=seed)
    lo, hi = data.scale_range
    factor = canonical_factor(example, data, input_size) * (lo + (hi - lo) * u[0])
    angle = data.max_rotation * (2.0 * u[1] - 1.0)
    flip = u[2] < data.flip_probability
    return crop_example(example, input_size, factor, angle, flip, flip_permutation)


def eval_crop(example, data: ml_collections.ConfigDict, input_size: int) -> dict:
    """The canonical crop: canonical scale, no rotation, no flip."""
    return crop_example(example, input_size, canonical_factor(example, data, input_size), 0.0, None, None)
