"""Mixed precision (`model.dtype = "bfloat16"`): convolutions and activations in bfloat16;
parameters, gradients, optimiser state, beliefs and loss in float32. `"auto"` is float32 here
(a CPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax.model import cpm as cpm_model
from cpm_jax.model import losses
from cpm_jax.training import state as train_states
from tests.conftest import tiny_config


def float_leaves(tree) -> list:
    return [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]


def conv_outputs(intermediates) -> dict:
    """{path: output} of every convolution's __call__ in flax's captured intermediates."""
    found = {}
    for path, value in jax.tree_util.tree_leaves_with_path(intermediates):
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        if any(isinstance(k, str) and k.startswith("conv") for k in keys) and "__call__" in keys:
            found["/".join(map(str, keys))] = value
    return found


def inputs(config, batch: int = 2):
    size = config.model.input_size
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.uniform(-0.5, 0.5, (batch, size, size, 3)), jnp.float32)
    center = jnp.asarray(rng.uniform(0, 1, (batch, size // 8, size // 8, 1)), jnp.float32)
    targets = jnp.asarray(rng.uniform(0, 1, (batch, size // 8, size // 8, config.model.num_parts + 1)), jnp.float32)
    return image, center, targets


@pytest.fixture(scope="module")
def bf16():
    """(config, state) of the tiny 2-stage CPM computing in bfloat16."""
    config = tiny_config(num_stages=2, dropout_rate=0.1)
    config.model.dtype = "bfloat16"
    return config, train_states.create(config, jax.random.key(0))


def test_bfloat16_computes_with_float32_parameters_optimiser_state_beliefs_and_loss(bf16):
    config, state = bf16
    assert all(x.dtype == jnp.float32 for x in float_leaves(state.params))
    image, center, targets = inputs(config)
    rngs = {"dropout": jax.random.key(1)}

    beliefs, captured = jax.jit(lambda p: state.apply_fn({"params": p}, image, center, train=True, rngs=rngs,
                                                         capture_intermediates=True,
                                                         mutable=["intermediates"]))(state.params)
    convs = conv_outputs(captured["intermediates"])
    assert len(convs) >= 8, list(convs)                        # every stage's convolutions
    assert {str(v.dtype) for v in convs.values()} == {"bfloat16"}, {k: v.dtype for k, v in convs.items()}
    assert beliefs.dtype == jnp.float32 and beliefs.shape == (2, 2, 4, 4, 15)

    def loss_fn(params):
        out = state.apply_fn({"params": params}, image, center, train=True, rngs=rngs)
        return losses.cpm_loss(out, targets)

    @jax.jit
    def step(state):
        (loss, per_stage), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return loss, per_stage, grads, state.apply_gradients(grads=grads)

    loss, per_stage, grads, updated = step(state)
    assert loss.dtype == per_stage.dtype == jnp.float32 and np.isfinite(float(loss))
    assert all(g.dtype == jnp.float32 for g in float_leaves(grads))
    assert all(x.dtype == jnp.float32 for x in float_leaves(updated.params))
    assert float_leaves(updated.opt_state) and all(x.dtype == jnp.float32 for x in float_leaves(updated.opt_state))


def test_bfloat16_beliefs_follow_float32_closely(bf16):
    config, state = bf16
    config = config.copy_and_resolve_references()
    image, center, _ = inputs(config)
    out = {}
    for dtype in ("float32", "bfloat16"):
        config.model.dtype = dtype
        out[dtype] = jax.jit(cpm_model.CPM(config.model).apply)({"params": state.params}, image, center)
    scale = float(jnp.abs(out["float32"]).max())
    assert float(jnp.abs(out["bfloat16"] - out["float32"]).max()) < 0.05 * scale + 1e-3


def test_the_loss_is_summed_in_float32_whatever_the_beliefs_dtype():
    # 10^5 cells of 0.01 each: a bfloat16 running sum would stall far below the float32 one.
    beliefs = jnp.full((1, 1, 100, 100, 10), 0.1, jnp.bfloat16)
    targets = jnp.zeros((1, 100, 100, 10), jnp.float32)
    total, per_stage = losses.cpm_loss(beliefs, targets)
    assert total.dtype == jnp.float32
    expected = 100 * 100 * 10 * float(jnp.bfloat16(0.1)) ** 2 / 2
    assert float(total) == pytest.approx(expected, rel=1e-4)


def test_compute_dtype_names():
    assert cpm_model.compute_dtype("bfloat16") == jnp.bfloat16
    assert cpm_model.compute_dtype("float16") == jnp.float16
    assert cpm_model.compute_dtype("auto") == (jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
