"""Gradient-magnitude histograms by layer depth (paper Figure 5; cpm_jax/training/gradients.py): the
binning, the period bookkeeping (device-side sums, resume), a tiny training run writing
gradients.npz and gradients.png, the effect of intermediate supervision on stage 1's first
convolution, and the default step left without histograms."""
import functools

import flax
import jax
import numpy as np
import pytest

from cpm_jax import configs, errors
from cpm_jax.model import cpm as cpm_model
from cpm_jax.training import gradients, trainer
from cpm_jax.training import state as train_states
from cpm_jax.training import step as step_lib
from data_pipelines import pipeline
from tests.conftest import tiny_config


def test_histograms_put_every_element_in_one_bin_with_end_bins_open():
    edges = np.array([1e-3, 1e-2, 1e-1, 1.0])   # 3 bins: [.001, .01) [.01, .1) [.1, 1) (+ ends)
    grads = {"a": {"kernel": np.array([[0.0, -1e-9, 5e-3], [-2e-2, 0.5, 7.0]], np.float32)},
             "b": np.array([np.inf, np.nan, -3e-2, 1e-20], np.float32)}
    counts = jax.jit(lambda g: gradients.histograms(g, {"x": ("a", "kernel"), "y": ("b",)}, edges))(grads)
    # 0, 1e-9 (below the first edge) and 5e-3 -> bin 0; 2e-2 -> bin 1; 0.5 and 7 (above) -> bin 2
    np.testing.assert_array_equal(counts["x"], [3, 1, 2])
    np.testing.assert_array_equal(counts["y"], [1, 1, 2])   # inf and NaN in the last bin
    assert counts["x"].dtype == np.int32
    # The default edges: a zero in the first bin, a huge value in the last, 1e-5 in its decade.
    default = np.asarray(gradients.histograms({"k": np.array([0.0, 3e-5, 1e3], np.float32)}, {"k": ("k",)})["k"])
    assert default.sum() == 3 and default[0] == 1 and default[-1] == 1
    i = np.flatnonzero((gradients.EDGES[:-1] <= 3e-5) & (3e-5 < gradients.EDGES[1:]))[0]
    assert default[i] == 1


def test_recorder_sums_periods_reads_back_and_resumes(tmp_path):
    names, bins = ["stage1_first", "stage1_last"], len(gradients.EDGES) - 1
    step_counts = lambda step: np.full((1, 2, bins), step, np.int32)   # noqa: E731  (devices, L, B)
    rec = gradients.Recorder(str(tmp_path), 3, names, ["p/conv1", "p/conv2"], sizes=[bins, bins],
                             intermediate_supervision=False)
    rec.flush_every = 2  # read back inside a period too: the sums must not change
    for step in range(1, 8):
        rec.add(step, step_counts(step))
        if step == 3:
            assert rec._device_sum is None and len(rec.ends) == 1
    rec.finish(7)
    data = gradients.load(str(tmp_path / "gradients.npz"))
    np.testing.assert_array_equal(data["period_end"], [3, 6, 7])
    np.testing.assert_array_equal(data["period_steps"], [3, 3, 1])
    np.testing.assert_array_equal(data["counts"][:, 0, 0], [1 + 2 + 3, 4 + 5 + 6, 7])
    assert data["intermediate_supervision"] is False and list(data["names"]) == names
    assert (tmp_path / "gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A resume from step 4 keeps the period ending at 3, drops the later ones, appends its own.
    rec = gradients.Recorder(str(tmp_path), 3, names, ["p/conv1", "p/conv2"], [bins, bins], False, start_step=4)
    for step in range(5, 7):
        rec.add(step, step_counts(step))
    rec.finish(6)
    data = gradients.load(str(tmp_path / "gradients.npz"))
    np.testing.assert_array_equal(data["period_end"], [3, 6])
    np.testing.assert_array_equal(data["period_steps"], [3, 2])
    np.testing.assert_array_equal(data["counts"][:, 1, 0], [6, 5 + 6])


def test_config_key_is_validated_and_may_change_on_resume():
    from cpm_jax.training import checkpointing
    config = tiny_config()
    assert configs.paper_config("lsp").training.gradient_histogram_every == 0
    for bad in (-1, 1.5):
        config.training = dict(config.training.to_dict(), gradient_histogram_every=bad)  # any type
        with pytest.raises(errors.ConfigError, match=r"^config.training.gradient_histogram_every = "):
            configs.validate(config)
    config = tiny_config()
    config.training.gradient_histogram_every = 5
    configs.validate(config)
    assert "training.gradient_histogram_every" in checkpointing.RESUMABLE_CHANGES


def test_tiny_run_writes_histograms_per_period_and_the_picture(tmp_path):
    config = tiny_config(num_stages=2)
    config.loss.intermediate_supervision = False
    config.training.num_steps = 5
    config.training.gradient_histogram_every = 2
    config.training.checkpoint_every = 5
    config.data.num_heldout = 2
    config.training.num_visualized = 1
    report = trainer.train_and_evaluate(config, str(tmp_path))
    data = gradients.load(str(tmp_path / "gradients.npz"))
    bins = len(gradients.EDGES) - 1
    assert data["counts"].shape == (3, 4, bins)            # periods ending at 2, 4 and 5 (partial)
    np.testing.assert_array_equal(data["period_end"], [2, 4, 5])
    np.testing.assert_array_equal(data["period_steps"], [2, 2, 1])
    assert list(data["names"]) == ["stage1_first", "stage1_last", "stage2_first", "stage2_last"]
    assert data["intermediate_supervision"] is False       # the run's loss.intermediate_supervision
    params = train_states.create(config, jax.random.key(0)).params
    sizes = [np.prod(cpm_model.at_path(params, p).shape) for p in cpm_model.first_and_last_convs(params).values()]
    np.testing.assert_array_equal(data["counts"].sum(-1), np.outer(data["period_steps"], sizes))
    png = tmp_path / "gradients.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert str(png) in report["pictures"]


def test_intermediate_supervision_feeds_stage1_and_the_default_step_records_nothing():
    config = tiny_config(num_stages=2)
    state = flax.jax_utils.replicate(train_states.create(config, jax.random.key(0)))
    batch, rng = next(pipeline.train_batches(config, 1)), flax.jax_utils.replicate(jax.random.key(1))
    _, default = step_lib.parallel_train_step(config)(jax.tree.map(np.copy, state), batch, rng)
    assert "grad_histograms" not in default and "grad_norms" in default
    centres = np.log10(np.sqrt(gradients.EDGES[:-1] * gradients.EDGES[1:]))
    mean_log = {}
    for flag in (True, False):
        step = jax.pmap(functools.partial(step_lib.train_step, intermediate_supervision=flag, record_gradients=True),
                        axis_name="batch")
        _, metrics = step(state, batch, rng)
        first = np.asarray(metrics["grad_histograms"][0, 0])   # stage1_first: layer 0
        assert first.sum() == np.prod(state.params["stage1"]["layers"]["conv1"]["kernel"].shape[1:])
        mean_log[flag] = (first * centres).sum() / first.sum()
    # Only the final stage's loss: stage 1's first convolution gets its gradient through stage 2
    # alone, about two decades smaller on this model (seeds 0-3: 1.8 to 2.3 decades).
    assert mean_log[False] < mean_log[True] - 1.0, mean_log
