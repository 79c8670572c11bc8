"""Crop geometry of training and evaluation (reference section 4), in TensorFlow.

One example is a dict of the common record: image uint8 (H, W, 3); joints float32 (P, 2), (x, y)
pixels, 0-based, integer values at pixel centres; visibility int32 (P,) (COCO: 0 not labelled);
center float32 (2,) person centre, pixels; scale float32 () person height, pixels.

Training, in the release's order: (1) scale so the person is `person_height` x input size tall,
times U[scale_range] (bicubic); (2) rotate by U[-max_rotation, max_rotation] degrees about the
person centre and (3) crop/pad the input-size window centred on it, grey 128 fill, in one warp;
(4) flip with `flip_probability`, swapping left and right joints. Image and joints go through the
same matrices, so labels stay on the body.
"""
import math

import ml_collections
import tensorflow as tf

from data_pipelines import skeleton

GREY = 128.0


def _scale_image(image, factor):
    """Bicubic resize by `factor`; returns the image and the exact (sx, sy) used after rounding."""
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = tf.maximum(tf.round(size * factor), 1.0)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.cast(new_size, tf.int32), method="bicubic")
    hw_scale = new_size / size
    return tf.clip_by_value(resized, 0.0, 255.0), tf.stack([hw_scale[1], hw_scale[0]])


def _rotation(angle_deg):
    """2x2 matrix rotating image points (y down) by `angle_deg`, counter-clockwise as displayed."""
    a = angle_deg * (math.pi / 180.0)
    c, s = tf.cos(a), tf.sin(a)
    return tf.reshape(tf.stack([c, s, -s, c]), [2, 2])


def crop_example(example, input_size: int, factor, angle_deg, flip):
    """Scale by `factor`, rotate by `angle_deg` about the person centre, crop, optionally flip.

    Returns (image float32 (S, S, 3) in [0, 255], joints (P, 2) in crop pixels, visibility (P,),
    crop_to_image float32 (2, 3): the affine map from crop pixels back to original pixels).
    """
    image, sxy = _scale_image(example["image"], factor)
    to_scaled = lambda p: (p + 0.5) * sxy - 0.5  # original -> scaled pixels (half-pixel centres)
    centre = to_scaled(example["center"])
    crop_centre = tf.fill([2], (input_size - 1) / 2.0)
    rot = _rotation(tf.cast(angle_deg, tf.float32))
    # crop point q = rot @ (p - centre) + crop_centre; the warp needs the inverse, q -> p.
    inv = tf.transpose(rot)
    offset = centre - tf.linalg.matvec(inv, crop_centre)
    warp = tf.concat([inv[0], offset[:1], inv[1], offset[1:], [0.0, 0.0]], axis=0)
    cropped = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=warp[None], output_shape=[input_size, input_size],
        fill_value=GREY, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    joints = tf.linalg.matvec(rot[None], to_scaled(example["joints"]) - centre) + crop_centre
    visibility = example["visibility"]
    # crop -> original: p = ((inv @ q + offset) + 0.5) / sxy - 0.5
    crop_to_image = tf.concat([inv / sxy[:, None], ((offset + 0.5) / sxy - 0.5)[:, None]], axis=1)
    if flip is not None:
        cropped, joints, visibility, crop_to_image = tf.cond(
            flip, lambda: _flip(cropped, joints, visibility, crop_to_image, input_size),
            lambda: (cropped, joints, visibility, crop_to_image))
    return cropped, joints, visibility, crop_to_image


def _flip(image, joints, visibility, crop_to_image, input_size):
    """Horizontal flip of a crop: mirror x, relabel left <-> right."""
    perm = list(skeleton.FLIP_PERMUTATION)
    joints = tf.gather(joints, perm) * [-1.0, 1.0] + [input_size - 1.0, 0.0]
    # original = A @ [x, y, 1] with x = S-1-x'  =>  negate A's x column, shift by (S-1) x column.
    a = crop_to_image
    flipped_a = tf.stack([-a[:, 0], a[:, 1], a[:, 2] + (input_size - 1.0) * a[:, 0]], axis=1)
    return tf.reverse(image, axis=[1]), joints, tf.gather(visibility, perm), flipped_a


def canonical_factor(example, data: ml_collections.ConfigDict, input_size: int):
    """Image scale that makes the person `data.person_height` x input size tall."""
    return data.person_height * input_size / example["scale"]


def train_crop(example, seed, data: ml_collections.ConfigDict, input_size: int):
    """Random scale, rotation and flip drawn statelessly from `seed` (shape (2,) int)."""
    u = tf.random.stateless_uniform([3], seed=seed)
    lo, hi = data.scale_range
    factor = canonical_factor(example, data, input_size) * (lo + (hi - lo) * u[0])
    angle = data.max_rotation * (2.0 * u[1] - 1.0)
    flip = u[2] < data.flip_probability
    return crop_example(example, input_size, factor, angle, flip)


def eval_crop(example, data: ml_collections.ConfigDict, input_size: int):
    """The canonical crop: canonical scale, no rotation, no flip."""
    return crop_example(example, input_size, canonical_factor(example, data, input_size), 0.0, None)
