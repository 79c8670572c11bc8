"""tf.data input pipelines: records -> crops, targets, center map -> device-shaped numpy batches.

Batches are dicts of numpy arrays shaped (num_devices, per_device_batch, ...):
  image       (D, b, S, S, 3) float32, x/256 - 0.5
  center_map  (D, b, S/8, S/8, 1) float32
  targets     (D, b, S/8, S/8, P+1) float32 (training only)
  joints      (D, b, P, 2) crop pixels;  visibility (D, b, P) int32
Evaluation batches also carry the original record's joints and the crop -> image map, and
a `valid` mask for the padding of the last batch.
"""
import os
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from data_pipelines import augment, registry, targets

tf.config.set_visible_devices([], "GPU")  # TensorFlow only feeds the accelerators; JAX owns them.


def _normalise(image):
    return image / 256.0 - 0.5


def _to_devices(batch, num_devices: int):
    return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(2, os.cpu_count() or 2)
    return options


def train_batches(config: ml_collections.ConfigDict, num_devices: int,
                  start_step: int = 0) -> Iterator[dict]:
    """Endless augmented training batches; step k always gets the same examples and augmentation,
    so a resumed run sees exactly what an uninterrupted one would."""
    data, size = config.data, config.model.input_size
    batch = config.training.global_batch_size
    pooled_center = tf.constant(targets.center_map(size, sigma=data.center_sigma))

    def prepare(record):
        seed = tf.stack([tf.cast(config.seed, tf.int64), record["index"]])
        image, joints, visibility, _ = augment.train_crop(record, seed, data, size)
        return {
            "image": _normalise(image),
            "center_map": pooled_center,
            "targets": targets.belief_targets(joints, visibility, size, sigma=data.target_sigma),
            "joints": joints,
            "visibility": visibility,
        }

    records = registry.get(data.dataset)(data, "train", start_step * batch, None)
    ds = records.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(2).with_options(_options())
    return (_to_devices(b, num_devices) for b in ds.as_numpy_iterator())


def eval_batches(config: ml_collections.ConfigDict, num_devices: int, split: str = "heldout",
                 count: int | None = None) -> Iterator[dict]:
    """Canonical crops of a split, padded to whole batches (`valid` marks the real examples)."""
    data, size = config.data, config.model.input_size
    batch = config.training.eval_batch_size
    count = data.num_heldout if count is None else count
    pooled_center = tf.constant(targets.center_map(size, sigma=data.center_sigma))

    def prepare(record):
        image, joints, visibility, crop_to_image = augment.eval_crop(record, data, size)
        return {
            "image": _normalise(image),
            "center_map": pooled_center,
            "joints": joints,
            "visibility": visibility,
            "image_joints": record["joints"],
            "crop_to_image": crop_to_image,
            "index": record["index"],
            "valid": tf.constant(True),
        }

    ds = registry.get(data.dataset)(data, split, 0, count).map(
        prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch).prefetch(2).with_options(_options())
    for b in ds.as_numpy_iterator():
        missing = batch - len(b["valid"])
        if missing:
            b = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
        yield _to_devices(b, num_devices)
