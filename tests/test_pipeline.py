"""tf.data pipelines: device-shaped batches, determinism for resuming, padded evaluation batches."""
import numpy as np
import pytest

from data_pipelines import pipeline, registry
from tests.conftest import tiny_config


def test_train_batches_are_shaped_for_devices():
    config = tiny_config()
    batch = next(pipeline.train_batches(config, num_devices=2))
    assert batch["image"].shape == (2, 2, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["center_map"].shape == (2, 2, 4, 4, 1)
    assert batch["targets"].shape == (2, 2, 4, 4, 15)
    assert batch["joints"].shape == (2, 2, 14, 2) and batch["visibility"].shape == (2, 2, 14)
    assert -0.5 <= batch["image"].min() and batch["image"].max() < 0.5


def test_resuming_at_step_k_replays_step_k():
    config = tiny_config()
    stream = pipeline.train_batches(config, 1)
    third = [next(stream) for _ in range(3)][2]
    resumed = next(pipeline.train_batches(config, 1, start_step=2))
    for key in third:
        np.testing.assert_array_equal(third[key], resumed[key])
    other_seed = tiny_config()
    other_seed.seed = 1
    assert not np.array_equal(next(pipeline.train_batches(other_seed, 1, start_step=2))["image"], third["image"])


def test_eval_batches_pad_the_last_batch_and_mark_it():
    config = tiny_config()
    config.training.eval_batch_size = 4
    batches = list(pipeline.eval_batches(config, 1, "heldout", count=6))
    assert len(batches) == 2
    assert batches[1]["valid"].tolist() == [[True, True, False, False]]
    assert batches[0]["crop_to_image"].shape == (1, 4, 2, 3)
    assert batches[0]["index"].ravel().tolist() == [0, 1, 2, 3]


def test_unknown_dataset_and_split_are_named():
    with pytest.raises(ValueError, match="unknown dataset; known: synthetic"):
        registry.get("coco")
    assert registry.get("synthetic").num_parts == 14
    with pytest.raises(ValueError, match="dataset 'synthetic': unknown split 'val'; known: train, heldout"):
        registry.open_split(tiny_config().data, "val")
