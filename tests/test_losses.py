"""The CPM objective on hand-made inputs."""
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax.model import losses


def test_per_stage_sum_of_squares_over_two_batch():
    beliefs = jnp.zeros((2, 3, 4, 4, 5))
    beliefs = beliefs.at[:, 1].set(0.5).at[:, 2].set(1.0)
    targets = jnp.ones((2, 4, 4, 5))
    total, per_stage = losses.cpm_loss(beliefs, targets)
    cells = 4 * 4 * 5
    np.testing.assert_allclose(per_stage, [2 * cells / 4, 2 * cells * 0.25 / 4, 0.0])
    assert float(total) == pytest.approx(cells / 2 + cells / 8)


def test_final_stage_only():
    beliefs = jnp.zeros((1, 2, 2, 2, 3)).at[:, 1].set(2.0)
    total, per_stage = losses.cpm_loss(beliefs, jnp.zeros((1, 2, 2, 3)), intermediate_supervision=False)
    np.testing.assert_allclose(per_stage, [0.0, 12 * 4 / 2])
    assert float(total) == pytest.approx(24.0)


def test_per_stage_targets():
    beliefs = jnp.ones((1, 2, 2, 2, 3))
    targets = jnp.stack([jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3))], axis=1)  # (B, T, ...)
    total, per_stage = losses.cpm_loss(beliefs, targets)
    np.testing.assert_allclose(per_stage, [6.0, 0.0])
    assert float(total) == pytest.approx(6.0)
