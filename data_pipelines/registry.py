"""One registry: `config.data.dataset` names a source of common records (see augment.py).

A source is a function (data_config, split, start, count) -> tf.data.Dataset of record dicts,
each with an int64 `index` (the example's position in its split, the seed of its augmentation).
`count=None` asks for an endless stream from `start` (train), wrapping epochs for finite sets.
"""
from typing import Callable, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from data_pipelines import skeleton, synthetic

Source = Callable[[ml_collections.ConfigDict, str, int, Optional[int]], tf.data.Dataset]

RECORD_SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "joints": tf.TensorSpec([skeleton.NUM_JOINTS, 2], tf.float32),
    "visibility": tf.TensorSpec([skeleton.NUM_JOINTS], tf.int32),
    "center": tf.TensorSpec([2], tf.float32),
    "scale": tf.TensorSpec([], tf.float32),
}
SYNTHETIC_SPLITS = {"train": "train", "heldout": "heldout", "test": "heldout"}


def synthetic_records(data: ml_collections.ConfigDict, split: str, start: int = 0,
                      count: Optional[int] = None) -> tf.data.Dataset:
    """Procedural figures (data_pipelines/synthetic.py), rendered on the fly from their index."""
    if split not in SYNTHETIC_SPLITS:
        raise ValueError(f"synthetic dataset: unknown split {split!r}; known: {', '.join(SYNTHETIC_SPLITS)}")
    split = SYNTHETIC_SPLITS[split]
    seed, size = int(data.get("synthetic_seed", 0)), int(data.synthetic_image_size)
    keys = list(RECORD_SIGNATURE)

    def render(index):
        example = synthetic.render_example(seed, split, int(index), size)
        return [np.asarray(example[k]) for k in keys]

    def to_record(index):
        values = tf.numpy_function(render, [index], [s.dtype for s in RECORD_SIGNATURE.values()],
                                   stateful=False)
        record = {k: tf.ensure_shape(v, RECORD_SIGNATURE[k].shape) for k, v in zip(keys, values)}
        record["index"] = index
        return record

    indices = tf.data.Dataset.range(start, start + count) if count is not None else \
        tf.data.Dataset.range(start, np.iinfo(np.int64).max)
    return indices.map(to_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


DATASETS: dict[str, Source] = {
    "synthetic": synthetic_records,
}


def get(name: str) -> Source:
    if name not in DATASETS:
        raise ValueError(f"config.data.dataset = {name!r}: unknown dataset; known: {', '.join(DATASETS)}")
    return DATASETS[name]
