"""Model shapes, parameter counts, receptive fields and pooling, without real compute where costly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax import configs
from cpm_jax.model import architecture as arch
from cpm_jax.model import cpm as cpm_model
from cpm_jax.model import summary
from tests.conftest import normal, tiny_config


def test_paper_lsp_model_counts_and_shapes():
    d = summary.describe(configs.paper_model(num_stages=6, num_parts=14))
    assert d["params"] == 31_219_866
    assert d["params_per_stage"] == [4_386_095, 7_515_311] + [4_829_615] * 4
    assert d["output_shape"] == [1, 6, 46, 46, 15]
    assert d["receptive_field_px"] == [167, 407, 647, 887, 1127, 1367]
    assert d["gmacs"] == pytest.approx(175.4, abs=0.1)


def test_paper_flic_model_count():
    d = summary.describe(configs.paper_model(num_stages=4, num_parts=9))
    assert d["params"] == 21_323_816
    assert d["output_shape"] == [1, 4, 46, 46, 10]


@pytest.mark.parametrize("num_stages", [1, 2, 3])
def test_stage_count_sets_parameter_groups(num_stages):
    d = summary.describe(configs.paper_model(num_stages=num_stages))
    assert len(d["params_per_stage"]) == num_stages
    assert sum(d["params_per_stage"]) == d["params"]
    assert d["output_shape"][1] == num_stages


def test_later_stage_concat_is_features_beliefs_and_center_map():
    m = configs.paper_model(num_stages=2)
    image = jax.ShapeDtypeStruct((1, 368, 368, 3), jnp.float32)
    center = jax.ShapeDtypeStruct((1, 46, 46, 1), jnp.float32)
    params = jax.eval_shape(lambda i, c: cpm_model.CPM(m).init(jax.random.key(0), i, c), image, center)["params"]
    assert params["stage2"]["head"]["conv1"]["kernel"].shape == (11, 11, 32 + 15 + 1, 128)
    assert params["stage2"]["features"]["conv1"]["kernel"].shape == (5, 5, 128, 32)
    assert params["trunk"]["layers"]["conv1"]["kernel"].shape == (9, 9, 3, 128)


def test_pooling_sizes_follow_caffe_ceil_mode():
    assert [arch.pooled_size(368, [arch.MaxPool()] * k) for k in range(4)] == [368, 184, 92, 46]
    x = jnp.arange(2 * 5 * 5, dtype=jnp.float32).reshape(1, 5, 5, 2)
    pooled = cpm_model.caffe_max_pool(x, 3, 2)
    assert pooled.shape == (1, 2, 2, 2)  # ceil((5-3)/2)+1 = 2
    x = jnp.arange(6 * 6, dtype=jnp.float32).reshape(1, 6, 6, 1)
    pooled = cpm_model.caffe_max_pool(x, 3, 2)
    # 6 -> 3: the last window covers rows/cols 4..5 plus one -inf pad, so its max is x[5, 5].
    assert pooled.shape == (1, 3, 3, 1)
    assert float(pooled[0, 2, 2, 0]) == 35.0
    assert float(pooled[0, 0, 0, 0]) == float(x[0, 2, 2, 0])


def test_receptive_field_matches_hand_count():
    # Stage 1: conv9 -> 9, pool -> 11 (jump 2), conv9 -> 27, pool -> 31 (4), conv9 -> 63,
    # pool -> 71 (8), conv5 -> 103, conv9 -> 167; a later stage adds 3 x 10 x 8 = 240.
    m = configs.paper_model(num_stages=3)
    assert arch.stage_receptive_fields(m) == [167, 407, 647]
    m.stage_kernel = 7
    assert arch.stage_receptive_fields(m) == [167, 167 + 3 * 6 * 8, 167 + 2 * 3 * 6 * 8]


def test_paper_init_is_gaussian_001_with_zero_bias():
    m = configs.paper_model(num_stages=1)
    m.input_size = 64
    variables = cpm_model.CPM(m).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 8, 8, 1)))
    conv = variables["params"]["stage1"]["layers"]["conv2"]
    assert float(jnp.std(conv["kernel"])) == pytest.approx(0.01, rel=0.02)
    assert float(jnp.abs(conv["bias"]).max()) == 0.0


def test_dropout_only_in_stage1_and_only_in_training():
    config = tiny_config(num_stages=3, dropout_rate=0.5)
    model = cpm_model.CPM(config.model)
    image = normal(1, (2, 32, 32, 3))
    center = jnp.ones((2, 4, 4, 1))
    variables = model.init(jax.random.key(0), image, center)
    eval_a = model.apply(variables, image, center, train=False)
    eval_b = model.apply(variables, image, center, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = lambda seed: model.apply(variables, image, center, train=True, rngs={"dropout": jax.random.key(seed)})
    assert not np.allclose(train(1)[:, 0], train(2)[:, 0])  # stage 1 is stochastic in training
    # Later stages have no dropout: with stage 1's output fixed they are deterministic. Zero the
    # dropout rate and compare against the same stage-1 path.
    no_dropout = tiny_config(num_stages=3, dropout_rate=0.0)
    det = cpm_model.CPM(no_dropout.model).apply(variables, image, center, train=True)
    np.testing.assert_allclose(det, eval_a, rtol=1e-6, atol=1e-6)


def test_forward_output_shape_tiny():
    config = tiny_config(num_stages=3)
    model = cpm_model.CPM(config.model)
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.key(0), jnp.zeros((5, 32, 32, 3)), jnp.zeros((5, 4, 4, 1)))[0])
    assert out.shape == (5, 3, 4, 4, 15)


def test_output_convolutions_take_their_own_init():
    m = configs.paper_model(num_stages=2)
    m.input_size, m.kernel_init, m.output_init = 64, "he_normal", "paper_normal"
    params = cpm_model.CPM(m).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 8, 8, 1)))["params"]
    hidden = params["stage2"]["head"]["conv1"]["kernel"]     # 11x11x48 fan-in: He std = sqrt(2/5808)
    output = params["stage2"]["head"]["conv5"]["kernel"]     # the 1x1 to P+1 maps
    assert float(jnp.std(hidden)) == pytest.approx(np.sqrt(2 / (11 * 11 * 48)), rel=0.05)
    assert float(jnp.std(output)) == pytest.approx(0.01, rel=0.1)
    assert output.shape == (1, 1, 128, 15)
