"""summaries.py: scalars TensorBoard reads as scalars, written by process 0 only. (A training
run's events: tests/test_resume_kill.py.)"""
import os

import jax
import tensorflow as tf
from tensorflow.core.util import event_pb2

from cpm_jax.training import summaries


def events(directory) -> list[tuple[int, str, float, str]]:
    out = []
    for name in sorted(os.listdir(directory)):
        for record in tf.data.TFRecordDataset(os.path.join(directory, name)):
            event = event_pb2.Event.FromString(record.numpy())
            out += [(event.step, v.tag, float(tf.make_ndarray(v.tensor)), v.metadata.plugin_data.plugin_name)
                    for v in event.summary.value]
    return out


def test_scalars_are_written_as_tensorboard_scalars(tmp_path):
    writer = summaries.open(str(tmp_path / "tb"))
    writer.scalars(3, {"train/loss": 1.5, "eval/PCK@0.2/stage1": 0.25})
    writer.scalars(4, {"train/loss": float("nan")})
    writer.close()
    got = events(tmp_path / "tb")
    assert got[:2] == [(3, "train/loss", 1.5, "scalars"), (3, "eval/PCK@0.2/stage1", 0.25, "scalars")]
    assert got[2][:2] == (4, "train/loss") and got[2][2] != got[2][2]      # NaN is written as NaN


def test_only_process_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    writer = summaries.open(str(tmp_path / "tb"))
    writer.scalars(1, {"train/loss": 1.0})
    writer.close()
    assert not (tmp_path / "tb").exists()
