"""tf.data input pipelines: sources -> crops, targets, center map -> device-shaped numpy batches.

Batches are dicts of numpy arrays shaped (num_devices, per_device_batch, ...):
  image           (D, b, S, S, 3) float32, x/256 - 0.5
  center_map      (D, b, S/8, S/8, 1) float32
  targets         (D, b, S/8, S/8, P+1) float32 (training): the primary person's belief maps
  stage1_targets  (D, b, S/8, S/8, P+1) (training, multi-person datasets): every person's peaks
  joints          (D, b, P, 2) crop pixels
  visibility      (D, b, P) int32; 0 (no peak) also for joints outside the original image, as
                  the release did (they are labelled, and still scored)
Evaluation batches also carry the original record's joints (`image_joints`), the crop -> image
map, `index` and a `valid` mask for the padding of the last batch.

Order. Training streams stream positions 0, 1, 2, ... of this process; step k always gets the
same examples and augmentation, so a resumed run sees what an uninterrupted one would. A finite
split is read epoch after epoch, each epoch a fresh permutation drawn statelessly from
(seed, epoch); process i of n takes every n-th slot of it, so processes read disjoint examples
and an epoch is size // n examples per process. Augmentation is seeded by (seed, epoch x size +
index): new every epoch. Evaluation reads a split in order. With `data.skip_bad_examples` the
skipped examples leave gaps, so a resumed run is exact only up to the first skipped example.
"""
import atexit
import os
import weakref
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from data_pipelines import augment, registry, targets

tf.config.set_visible_devices([], "GPU")  # TensorFlow only feeds the accelerators; JAX owns them.

_FIELDS = {  # record field -> (dtype, shape given P parts)
    "image": (tf.uint8, lambda p: [None, None, 3]),
    "joints": (tf.float32, lambda p: [p, 2]),
    "visibility": (tf.int32, lambda p: [p]),
    "center": (tf.float32, lambda p: [2]),
    "scale": (tf.float32, lambda p: []),
    "others_joints": (tf.float32, lambda p: [None, p, 2]),
    "others_visibility": (tf.int32, lambda p: [None, p]),
}


class NumpyBatches:
    """Iterator over a tf.data pipeline's numpy batches, reshaped for `num_devices`.

    Pipelines that call Python (`tf.numpy_function`) hang the interpreter's exit if their
    iterator is still alive then; every NumpyBatches is therefore closed at exit."""
    _open: "weakref.WeakSet[NumpyBatches]" = weakref.WeakSet()

    def __init__(self, ds: tf.data.Dataset, num_devices: int, pad_to: int | None = None):
        self._iterator, self._num_devices, self._pad_to = ds.as_numpy_iterator(), num_devices, pad_to
        NumpyBatches._open.add(self)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            raise StopIteration
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.close()
            raise
        missing = (self._pad_to or 0) - len(next(iter(batch.values())))
        if missing > 0:  # evaluation: pad the last batch with zeros; `valid` marks real examples
            batch = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        return {k: v.reshape((self._num_devices, -1) + v.shape[1:]) for k, v in batch.items()}

    def close(self) -> None:
        self._iterator = None

    @classmethod
    def close_all(cls) -> None:
        for batches in list(cls._open):
            batches.close()


atexit.register(NumpyBatches.close_all)


def _normalise(image):
    return image / 256.0 - 0.5


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(2, os.cpu_count() or 2)
    return options


def _stream_indices(size: int | None, seed: int, shard: tuple[int, int]):
    """Stream position n -> (example index, augmentation key), see the module docstring."""
    process, processes = shard

    def to_index(n):
        if size is None:  # endless (synthetic): every index is new
            index = n * processes + process
            return index, index
        per_process = size // processes
        epoch, slot = n // per_process, (n % per_process) * processes + process
        index = tf.random.experimental.index_shuffle(
            slot, seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=tf.constant(size - 1, tf.int64))
        return index, epoch * size + index
    return to_index


def record_stream(source, positions: tf.data.Dataset, to_index=None) -> tf.data.Dataset:
    """Records of `source` at `positions`, with int64 `index` and `key` (augmentation seed).

    `to_index` maps a position to (index, key); by default both are the position. Examples the
    source skips (bad, with skip_bad_examples) are left out."""
    keys = list(_FIELDS)
    num_parts = source.num_parts

    def load(index):
        record = source.load(int(index))
        if record is None:
            return [np.zeros([0 if d is None else d for d in _FIELDS[k][1](num_parts)], _FIELDS[k][0].as_numpy_dtype)
                    for k in keys] + [False]
        return [np.asarray(record[k], _FIELDS[k][0].as_numpy_dtype) for k in keys] + [True]

    def to_record(index, key):
        values = tf.numpy_function(load, [index], [_FIELDS[k][0] for k in keys] + [tf.bool], stateful=False)
        record = {k: tf.ensure_shape(v, _FIELDS[k][1](num_parts)) for k, v in zip(keys, values)}
        record.update(index=index, key=key, ok=values[-1])
        return record

    to_index = to_index or (lambda n: (n, n))
    ds = positions.map(to_index).map(to_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.filter(lambda r: r.pop("ok"))


def train_records(source, seed: int, start: int = 0, shard: tuple[int, int] = (0, 1),
                  count: int | None = None) -> tf.data.Dataset:
    """The training stream of process `shard` from position `start` (endless unless `count`)."""
    if source.size:  # report skipped examples once per epoch of this process
        source.bad_examples.epoch_size = source.size // shard[1]
    positions = tf.data.Dataset.range(start, start + count if count else np.iinfo(np.int64).max)
    return record_stream(source, positions, _stream_indices(source.size, seed, shard))


def _label_visibility(record):
    """Joints outside the original image get no peak (the release's `isVisible = 2`)."""
    height, width = tf.unstack(tf.cast(tf.shape(record["image"])[:2], tf.float32))

    def inside(joints, visibility):
        x, y = joints[..., 0], joints[..., 1]
        ok = (x >= -0.5) & (y >= -0.5) & (x < width - 0.5) & (y < height - 0.5)
        return tf.where(ok, visibility, 0)
    return dict(record, visibility=inside(record["joints"], record["visibility"]),
                others_visibility=inside(record["others_joints"], record["others_visibility"]))


def train_examples(config: ml_collections.ConfigDict, start: int = 0,
                   shard: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """Unbatched augmented training examples from stream position `start` of process `shard`."""
    data, size = config.data, config.model.input_size
    dataset = registry.get(data.dataset)
    source = registry.open_split(data, "train")
    pooled_center = tf.constant(targets.center_map(size, sigma=data.center_sigma))

    def prepare(record):
        seed = tf.stack([tf.cast(config.seed, tf.int64), record["key"]])
        crop = augment.train_crop(_label_visibility(record), seed, data, size,
                                  dataset.skeleton.flip_permutation)
        example = {
            "image": _normalise(crop["image"]),
            "center_map": pooled_center,
            "targets": targets.belief_targets(crop["joints"], crop["visibility"], size, sigma=data.target_sigma),
            "joints": crop["joints"],
            "visibility": crop["visibility"],
            "index": record["index"],
        }
        if dataset.multi_person:
            everyone = tf.concat([crop["joints"][None], crop["others_joints"]], axis=0)
            labelled = tf.concat([crop["visibility"][None], crop["others_visibility"]], axis=0)
            example["stage1_targets"] = targets.belief_targets(everyone, labelled, size, sigma=data.target_sigma)
        return example

    records = train_records(source, config.seed, start, shard)
    return records.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_batches(config: ml_collections.ConfigDict, num_devices: int, start_step: int = 0,
                  shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Endless batches of this process's share (global batch / processes) of every step."""
    batch = config.training.global_batch_size // shard[1]
    ds = train_examples(config, start_step * batch, shard).map(lambda e: {k: v for k, v in e.items() if k != "index"})
    return NumpyBatches(ds.batch(batch, drop_remainder=True).prefetch(2).with_options(_options()), num_devices)


def eval_split(config: ml_collections.ConfigDict) -> str:
    """The split scored at the end of training: `data.eval_split`, else the dataset's own."""
    return config.data.get("eval_split") or registry.get(config.data.dataset).eval_split


def eval_batches(config: ml_collections.ConfigDict, num_devices: int, split: str | None = None,
                 count: int | None = None) -> Iterator[dict]:
    """Canonical crops of a split in order, padded to whole batches (`valid` marks the real
    examples). `count` examples (default `data.num_heldout`; 0 means the whole split)."""
    data, size = config.data, config.model.input_size
    batch = config.training.eval_batch_size
    source = registry.open_split(data, split or eval_split(config))
    count = count or data.num_heldout or source.size
    if source.size is not None:
        count = min(count, source.size)
    pooled_center = tf.constant(targets.center_map(size, sigma=data.center_sigma))

    def prepare(record):
        crop = augment.eval_crop(record, data, size)
        return {
            "image": _normalise(crop["image"]),
            "center_map": pooled_center,
            "joints": crop["joints"],
            "visibility": crop["visibility"],
            "image_joints": record["joints"],
            "crop_to_image": crop["crop_to_image"],
            "index": record["index"],
            "valid": tf.constant(True),
        }

    ds = record_stream(source, tf.data.Dataset.range(count)).map(
        prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return NumpyBatches(ds.batch(batch).prefetch(2).with_options(_options()), num_devices, pad_to=batch)
