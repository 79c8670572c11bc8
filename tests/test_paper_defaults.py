"""The paper's settings where they live (docs/paper_notes.md sections 1-5): configs.paper_*, the label
constants of data_pipelines/targets.py, the test-time constants of cpm_jax/evaluation/multiscale.py and the
experiments built from them. Every number is from docs/paper_notes.md."""
import importlib.util
import math

import numpy as np
import pytest

from cpm_jax import configs
from cpm_jax.evaluation import multiscale
from cpm_jax.model import architecture
from data_pipelines import augment, targets
from tests.conftest import ROOT


def experiment(name: str):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_paper_model_is_the_releases_network():
    m = configs.paper_model()
    assert (m.num_stages, m.num_parts, m.input_size) == (6, 14, 368)
    assert (m.trunk_kernel, m.trunk_features) == (9, 128)           # 3 x [conv 9x9 (128) + pool]
    assert m.bottleneck_features == 32                               # conv 5x5 (32)
    assert (m.stage1_kernel, m.stage1_features) == (9, 512)          # conv 9x9 (512), 1x1 (512)
    assert (m.stage_kernel, m.stage_features) == (11, 128)           # 3 x conv 11x11 (128), 1x1 (128)
    assert m.dropout_rate == 0.5
    assert m.kernel_init == m.output_init == "paper_normal"          # N(0, 0.01^2), biases 0
    assert m.dtype == "auto"                                         # bfloat16 on GPU/TPU, float32 on CPU
    # The layer lists built from these numbers.
    assert architecture.image_trunk(m) == (architecture.Conv(9, 128), architecture.MaxPool(3, 2)) * 3
    assert architecture.stage1_head(m) == (
        architecture.Conv(5, 32), architecture.Conv(9, 512), architecture.Dropout(0.5),
        architecture.Conv(1, 512), architecture.Dropout(0.5), architecture.Conv(1, 15, relu=False))
    assert architecture.refinement_features(m) == (architecture.Conv(5, 32),)
    assert architecture.refinement_head(m) == (architecture.Conv(11, 128),) * 3 + (
        architecture.Conv(1, 128), architecture.Conv(1, 15, relu=False))
    assert architecture.concat_channels(m) == 32 + 15 + 1
    assert architecture.STRIDE == 8
    assert architecture.pooled_size(368, architecture.image_trunk(m)) == 46   # 368 -> 184 -> 92 -> 46


def test_paper_data_is_the_releases_augmentation_and_labels():
    d = configs.paper_data("lsp")
    assert tuple(d.scale_range) == (0.7, 1.3)
    assert d.max_rotation == 40.0
    assert d.flip_probability == 0.5
    assert d.target_sigma == 7.0
    assert d.center_sigma == 21.0
    # Canonical zoom: MPII 1.171 / annotated scale; records' scale is 200 x MPII's scale.
    for mpii_scale in (0.8, 1.0, 2.5):
        factor = float(augment.canonical_factor({"scale": 200.0 * mpii_scale}, d, 368))
        assert factor == pytest.approx(41 / 35 / mpii_scale, rel=1e-9)
        assert factor == pytest.approx(1.171 / mpii_scale, rel=1e-3)


def test_paper_optimizer_is_the_releases_solver():
    o = configs.paper_optimizer()
    assert o.name == "caffe_sgd"
    assert o.learning_rate == 8e-5
    assert o.momentum == 0.9
    assert o.weight_decay == 5e-4
    assert tuple(o.stage1_multipliers) == (5.0, 10.0)
    assert tuple(o.other_multipliers) == (1.0, 2.0)
    assert o.decay_every == 136_106
    assert o.decay_factor == 0.333


def test_paper_config_and_the_experiments():
    c = configs.paper_config("lsp+lspet")
    assert c.model.to_dict() == configs.paper_model().to_dict()
    assert c.optimizer.to_dict() == configs.paper_optimizer().to_dict()
    assert {k: v for k, v in c.data.to_dict().items() if k != "dataset"} == \
        {k: v for k, v in configs.paper_data("x").to_dict().items() if k != "dataset"}
    assert c.training.global_batch_size == 16
    assert c.loss.intermediate_supervision is True                  # every stage weight 1
    lsp = experiment("lsp_paper")
    assert (lsp.data.dataset, lsp.model.num_stages, lsp.model.num_parts) == ("lsp+lspet", 6, 14)
    assert lsp.training.num_steps == 395_000 and lsp.training.global_batch_size == 16
    assert lsp.optimizer.to_dict() == configs.paper_optimizer().to_dict()
    mpii = experiment("mpii_paper")
    assert (mpii.data.dataset, mpii.model.num_stages, mpii.model.num_parts) == ("mpii", 6, 14)
    assert mpii.training.num_steps == 630_000
    flic = experiment("flic_paper")
    assert (flic.data.dataset, flic.model.num_stages, flic.model.num_parts) == ("flic", 4, 9)
    assert flic.training.num_steps == 40_000
    for config in (lsp, mpii, flic):
        configs.validate(config)
        assert config.model.input_size == 368 and config.model.dropout_rate == 0.5
        assert tuple(config.data.scale_range) == (0.7, 1.3) and config.data.max_rotation == 40.0


def test_label_constants_and_cell_centres():
    assert targets.STRIDE == 8
    assert targets.TARGET_SIGMA_PX == 7.0
    assert targets.TARGET_CUTOFF == 0.01
    assert targets.CENTER_SIGMA_PX == 21.0
    assert targets.CENTER_POOL_WINDOW == 9
    centres = targets.cell_centres(46)
    np.testing.assert_array_equal(centres, 3.5 + 8 * np.arange(46))
    assert centres[0] == 3.5 and centres[-1] == 363.5


def test_belief_target_by_hand():
    """A joint at crop px (27.5, 11.5) of a 48 px crop: cell (3, 1) centre, value 1; 8 px away
    exp(-64 / 98); 8 px on both axes exp(-128 / 98); 16 px away exp(-256 / 98) = 0.073; 24 px
    away exp(-576 / 98) = 0.0028 < 0.01, cut to 0. The background is 1 - max over parts."""
    maps = targets.belief_targets(np.array([[27.5, 11.5]], np.float32), np.array([2]), 48).numpy()
    assert maps.shape == (6, 6, 2)
    part = maps[..., 0]
    assert part[1, 3] == pytest.approx(1.0)
    assert part[1, 4] == pytest.approx(math.exp(-64 / 98), rel=1e-6)
    assert part[2, 4] == pytest.approx(math.exp(-128 / 98), rel=1e-6)
    assert part[1, 5] == pytest.approx(math.exp(-256 / 98), rel=1e-6)
    assert part[4, 3] == 0.0 and part[1, 0] == 0.0
    np.testing.assert_allclose(maps[..., 1], 1.0 - part, atol=1e-7)
    # The default sigma is 7 px: the same as asking for it.
    np.testing.assert_array_equal(maps, targets.belief_targets(np.array([[27.5, 11.5]], np.float32),
                                                               np.array([2]), 48, sigma=7.0).numpy())


def test_center_map_by_hand():
    """Gaussian sigma 21 px at the crop centre ((S - 1) / 2), 9 x 9 average pool at stride 8; a
    window at the bottom/right edge averages the pixels inside only."""
    s = 24
    pooled = targets.center_map(s)
    assert pooled.shape == (3, 3, 1)
    g = np.exp(-(np.arange(s) - 11.5) ** 2 / (2 * 21.0 ** 2))
    pool = [g[0:9].mean(), g[8:17].mean(), g[16:24].mean()]        # the last window: 8 pixels
    np.testing.assert_allclose(pooled[..., 0], np.outer(pool, pool), rtol=1e-6)
    np.testing.assert_array_equal(pooled, targets.center_map(s, sigma=21.0))
    assert targets.center_map(368).shape == (46, 46, 1)


def test_test_time_constants():
    assert multiscale.PAPER_SCALES == (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
    assert multiscale.LSP_HEIGHT_FRACTION == 0.8
    person = multiscale.person_from_image(200, 150, 368)
    assert person.center == (74.5, 99.5) and person.base_factor == pytest.approx(0.8 * 368 / 200)
    options = multiscale.Options()
    assert options.scales == multiscale.PAPER_SCALES and not options.flip and not options.subpixel
    assert options.stages is None                                    # the last stage
