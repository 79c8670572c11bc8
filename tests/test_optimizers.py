"""The release's solver: per-layer multipliers, weight decay on weights only, step decay."""
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax import configs
from cpm_jax.training import optimizers


def params():
    layer = lambda: {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}
    return {"stage1": {"layers": {"conv1": layer()}}, "stage2": {"head": {"conv1": layer()}}}


def test_first_sgd_step_uses_multipliers_and_decays_weights_only():
    cfg = configs.paper_optimizer()
    cfg.learning_rate = 0.1
    cfg.weight_decay = 0.5
    tx = optimizers.make(cfg, params())
    grads = {k: {m: {"conv1": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}} for m in v}
             for k, v in params().items()}
    updates, _ = tx.update(grads, tx.init(params()), params())
    # update = -lr x multiplier x (grad + decay x weight [kernels only])
    np.testing.assert_allclose(updates["stage1"]["layers"]["conv1"]["kernel"], -0.1 * 5 * (1 + 0.5 * 2))
    np.testing.assert_allclose(updates["stage1"]["layers"]["conv1"]["bias"], -0.1 * 10 * 1)
    np.testing.assert_allclose(updates["stage2"]["head"]["conv1"]["kernel"], -0.1 * 1 * (1 + 0.5 * 2))
    np.testing.assert_allclose(updates["stage2"]["head"]["conv1"]["bias"], -0.1 * 2 * 1)


def test_step_schedule_and_unknown_name():
    cfg = configs.paper_optimizer()
    cfg.decay_every = 10
    cfg.weight_decay = 0.0
    cfg.momentum = 0.0
    tx = optimizers.make(cfg, params())
    state = tx.init(params())
    grads = {k: {m: {"conv1": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}} for m in v} for k, v in params().items()}
    sizes = []
    for _ in range(11):
        updates, state = tx.update(grads, state, params())
        sizes.append(float(updates["stage2"]["head"]["conv1"]["kernel"][0]))
    assert sizes[9] == pytest.approx(-8e-5)
    assert sizes[10] == pytest.approx(-8e-5 * 0.333)
    cfg.name = "lion"
    with pytest.raises(ValueError, match="config.optimizer.name = 'lion': unknown"):
        optimizers.make(cfg, params())
