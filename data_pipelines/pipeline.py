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

Order. Step k (from 0) of global batch B reads stream slots kB .. (k+1)B - 1 (process i of n: those
= i mod n), resumed or not. A finite split's slot g is entry g mod E of the permutation of epoch
g // E, drawn statelessly from (seed, epoch), E = n x (size // n): processes read disjoint examples
(size // n per epoch each). An endless split's slot g is example g.
Augmentation is seeded by (seed, epoch x size + index): new every epoch. Evaluation reads in
order. Skipped bad examples leave gaps: a resumed run is then exact up to the first of them.

Failures. A source's UserError (a bad example, not skipped) reaches the consumer as itself
(`NumpyBatches`, `numpy_iterator`), the tf.data iterator dropped first (a live one hangs the
interpreter's exit). Skips are counted and reported per epoch of stream positions
(`sources.BadExampleLog`); the stream stops with a DataError naming the split and folder when an
epoch has no usable example or more than `data.max_skipped_fraction` of it is bad (`watch_skips`).
"""
import collections
import itertools
import os
import re
import threading
import weakref
from typing import Iterator

import ml_collections
import numpy as np

from cpm_jax import tf_loader
from cpm_jax.errors import UserError
from cpm_jax.model import architecture
from data_pipelines import augment, registry, targets

tf = tf_loader.import_tensorflow()

_FIELDS = {  # record field -> (dtype, shape given P parts)
    "image": (tf.uint8, lambda p: [None, None, 3]),
    "joints": (tf.float32, lambda p: [p, 2]),
    "visibility": (tf.int32, lambda p: [p]),
    "center": (tf.float32, lambda p: [2]),
    "scale": (tf.float32, lambda p: []),
    "others_joints": (tf.float32, lambda p: [None, p, 2]),
    "others_visibility": (tf.int32, lambda p: [None, p]),
    "head_box": (tf.float32, lambda p: [4]),
}


class NumpyBatches:
    """Iterator over a tf.data pipeline's numpy batches, reshaped for `num_devices`.

    Pipelines that call Python (`tf.numpy_function`) hang the interpreter's exit if their
    iterator is still alive then (its destructor, run while Python finalises, waits for loader
    threads that can no longer run Python). So the tf.data iterator is dropped as soon as
    anything goes wrong (a source's error, TensorFlow's, an interrupt), before the error goes
    up, and the error carries no traceback through the iterator; `close_all` closes every open
    one (at exit after `cpm_jax.runtime.setup()`, which every entry point calls)."""
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
            batch, failure = _next_or_failure(self._iterator)
        except BaseException:                 # StopIteration, KeyboardInterrupt, ...
            self.close()
            raise
        if failure is not None:               # a source failed: its own error, not TensorFlow's
            self.close()
            raise failure
        missing = (self._pad_to or 0) - len(next(iter(batch.values())))
        if missing > 0:  # evaluation: pad the last batch with zeros; `valid` marks real examples
            batch = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        return {k: v.reshape((self._num_devices, -1) + v.shape[1:]) for k, v in batch.items()}

    def close(self) -> None:
        """Drops the tf.data iterator: its destructor stops its threads (waiting for the Python
        calls in flight), which it can do now, while Python runs, and not at exit."""
        self._iterator = None

    def __enter__(self) -> "NumpyBatches":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @classmethod
    def close_all(cls) -> None:
        for batches in list(cls._open):
            batches.close()


def _options() -> tf.data.Options:
    """Deterministic, on a private pool of one thread per core, without autotuning: tf.data's
    autotune thread sleeps between optimisations (its period doubles up to 60 s) and dropping the
    iterator waits for it to wake (TensorFlow 2.21: up to 60 s, with the CPU idle). Without it,
    AUTOTUNE map parallelism is the pool's size."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(2, os.cpu_count() or 2)
    options.autotune.enabled = False
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


# Errors of the Python loader inside tf.data. tf.numpy_function turns an exception into a
# TensorFlow error whose message buries the original's text in a traceback; `record_stream`
# keeps each UserError here and raises a stand-in that names it, and `loader_error` gives the
# original back to the iterators (NumpyBatches, numpy_iterator), which raise it instead.
_LOADER_ERRORS: "collections.OrderedDict[int, UserError]" = collections.OrderedDict()
_LOADER_ERRORS_LOCK = threading.Lock()
_LOADER_ERROR_TAG = "cpm_jax loader error #"
_loader_error_ids = itertools.count()


class _LoaderError(RuntimeError):
    """Stands in for a UserError on its way through tf.data; the message names the original."""


def _keep(error: UserError) -> _LoaderError:
    key = next(_loader_error_ids)
    with _LOADER_ERRORS_LOCK:
        _LOADER_ERRORS[key] = error
        while len(_LOADER_ERRORS) > 64:   # errors never fetched (a pipeline dropped mid-way)
            _LOADER_ERRORS.popitem(last=False)
    return _LoaderError(f"{error} [{_LOADER_ERROR_TAG}{key}]")


def loader_error(error: tf.errors.OpError) -> UserError | None:
    """The UserError (BadExampleError, DataError, ...) a source raised inside a tf.data pipeline
    that TensorFlow reports as `error`; None if `error` is something else."""
    match = re.search(re.escape(_LOADER_ERROR_TAG) + r"(\d+)\]", error.message or "")
    if match is None:
        return None
    with _LOADER_ERRORS_LOCK:
        return _LOADER_ERRORS.pop(int(match.group(1)), None)


def numpy_iterator(ds: tf.data.Dataset) -> Iterator[dict]:
    """`ds.as_numpy_iterator()`, raising a source's own UserError (see `loader_error`) instead of
    the TensorFlow error that carries it. The tf.data iterator is dropped when this generator
    ends, fails or is closed (a live one hangs the interpreter's exit); use it up or close it."""
    iterator = ds.as_numpy_iterator()
    try:
        while True:
            try:
                element, failure = _next_or_failure(iterator)
            except StopIteration:
                return
            if failure is not None:
                iterator = None      # not kept alive by the error's traceback (it would hang the exit)
                raise failure
            yield element
    finally:
        iterator = None


def _next_or_failure(iterator) -> tuple:
    """(next element, None), or (None, the error to raise): the source's UserError where
    TensorFlow reports one, else TensorFlow's error without its traceback. The caller raises it
    outside this `except`, so that it carries neither the TensorFlow error as its context nor
    frames that hold the live iterator (a CLI keeps the error until exit, and a live iterator
    hangs the exit)."""
    try:
        return next(iterator), None
    except tf.errors.OpError as error:
        failure = loader_error(error) or error.with_traceback(None)
    return None, failure


def record_stream(source, positions: tf.data.Dataset, to_index=None) -> tf.data.Dataset:
    """Records of `source` at `positions`, with int64 `index` and `key` (augmentation seed).

    `to_index` maps a position to (index, key); by default both are the position. Examples the
    source skips (bad, with skip_bad_examples) are left out, counted per epoch of positions by the
    source's `bad_examples` log; a UserError of the source (a bad example without skipping, or
    the log's DataError when too many are skipped) reaches the iterator (NumpyBatches,
    numpy_iterator) as itself."""
    keys = list(_FIELDS)
    num_parts = source.num_parts
    skipping = bool(getattr(source, "skip_bad_examples", False))

    def load(index, position):
        try:
            record = source.load(int(index), int(position)) if skipping else source.load(int(index))
        except UserError as error:
            raise _keep(error) from None
        if record is None:
            return [np.zeros([0 if d is None else d for d in _FIELDS[k][1](num_parts)], _FIELDS[k][0].as_numpy_dtype)
                    for k in keys] + [False]
        return [np.asarray(record[k], _FIELDS[k][0].as_numpy_dtype) for k in keys] + [True]

    @tf.autograph.experimental.do_not_convert
    def to_record(position, index, key):
        values = tf.numpy_function(load, [index, position], [_FIELDS[k][0] for k in keys] + [tf.bool],
                                   stateful=False)
        record = {k: tf.ensure_shape(v, _FIELDS[k][1](num_parts)) for k, v in zip(keys, values)}
        record.update(index=index, key=key, ok=values[-1])
        return record

    to_index = to_index or (lambda n: (n, n))
    ds = positions.map(lambda n: (n,) + tuple(to_index(n))).map(
        to_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.filter(lambda r: r.pop("ok"))


def watch_skips(source, split: str, data: ml_collections.ConfigDict | None, epoch_size: int | None,
                start: int = 0) -> None:
    """Has the source's skip log count epochs of `epoch_size` stream positions from `start` and
    stop the stream past `data.max_skipped_fraction` (module docstring); no-op unless the source
    skips bad examples."""
    log = getattr(source, "bad_examples", None)
    if log is None or not getattr(source, "skip_bad_examples", False):
        return
    bound = None if data is None else data.get("max_skipped_fraction", None)
    log.configure(epoch_size, start, None if bound is None else float(bound),
                  where=f"{split} split of {getattr(source, 'where', source.name)}")


def train_records(source, seed: int, start: int = 0, shard: tuple[int, int] = (0, 1),
                  count: int | None = None, data: ml_collections.ConfigDict | None = None) -> tf.data.Dataset:
    """The training stream of process `shard` from position `start` (endless unless `count`).
    `data`: the config's data block, for `max_skipped_fraction` (None: no bound)."""
    if source.size:  # skips counted and reported per epoch of this process
        watch_skips(source, "train", data, source.size // shard[1], start)
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
                   shard: tuple[int, int] = (0, 1), source=None) -> tf.data.Dataset:
    """Unbatched augmented training examples from stream position `start` of process `shard`;
    `source`: the training split, already open (default: opened here)."""
    data, size = config.data, config.model.input_size
    dataset = registry.get(data.dataset)
    source = source or registry.open_split(data, "train")
    pooled_center = tf.constant(targets.center_map(size, sigma=data.center_sigma))

    @tf.autograph.experimental.do_not_convert     # plain TF ops: tracing as written is faster
    def prepare(record):
        seed = tf.stack([tf.cast(config.seed, tf.int64), record["key"]])
        crop = augment.train_crop(_label_visibility(record), seed, data, size,
                                  dataset.skeleton.flip_permutation)
        example = {
            "image": architecture.normalise_image(crop["image"]),
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

    records = train_records(source, config.seed, start, shard, data=data)
    return records.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_batches(config: ml_collections.ConfigDict, num_devices: int, start_step: int = 0,
                  shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Endless batches of this process's share (global batch / processes) of every step."""
    batch = config.training.global_batch_size // shard[1]
    ds = train_examples(config, start_step * batch, shard).map(lambda e: {k: v for k, v in e.items() if k != "index"})
    return NumpyBatches(ds.batch(batch, drop_remainder=True).prefetch(2).with_options(_options()), num_devices)


def eval_batches(config: ml_collections.ConfigDict, num_devices: int, split: str | None = None,
                 count: int = 0) -> Iterator[dict]:
    """Canonical crops of a split in order, padded to whole batches (`valid` marks the real
    examples): the first `registry.example_count(source, data, count)` examples of `split`
    (default: the dataset's evaluation split)."""
    data, size = config.data, config.model.input_size
    batch = config.training.eval_batch_size
    source = registry.open_split(data, split or registry.eval_split(data))
    count = registry.example_count(source, data, count)
    watch_skips(source, split or registry.eval_split(data), data, count)
    pooled_center = tf.constant(targets.center_map(size, sigma=data.center_sigma))

    @tf.autograph.experimental.do_not_convert     # plain TF ops: tracing as written is faster
    def prepare(record):
        crop = augment.eval_crop(record, data, size)
        return {
            "image": architecture.normalise_image(crop["image"]),
            "center_map": pooled_center,
            "joints": crop["joints"],
            "visibility": crop["visibility"],
            "image_joints": record["joints"],
            "head_box": record["head_box"],
            "crop_to_image": crop["crop_to_image"],
            "index": record["index"],
            "valid": tf.constant(True),
        }

    ds = record_stream(source, tf.data.Dataset.range(count)).map(
        prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return NumpyBatches(ds.batch(batch).prefetch(2).with_options(_options()), num_devices, pad_to=batch)
