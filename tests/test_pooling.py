"""The fast max-pool gradient equals XLA's select-and-scatter gradient; the exported graphs' pool
(one reduce-window) gives the same values, and with it the whole model the same beliefs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax.model import cpm
from cpm_jax.model.pooling import caffe_max_pool, window_max_pool
from tests.conftest import normal, tiny_config


def reference_pool(x, window, stride):
    out = [-(-(s - window) // stride) + 1 for s in x.shape[1:3]]
    pads = [((o - 1) * stride + window - s) for o, s in zip(out, x.shape[1:3])]
    return nn.max_pool(x, (window, window), (stride, stride), padding=[(0, pads[0]), (0, pads[1])])


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 9, 12, 2), (3, 7, 7, 1)])
@pytest.mark.parametrize("window, stride", [(3, 2), (2, 2), (3, 1), (5, 2), (4, 3)])
def test_values_and_gradients_match_xla(shape, window, stride):
    x = jax.nn.relu(normal(0, shape))  # many ties at zero
    x = x.at[0, 0, 0, 0].set(x[0, 1, 1, 0])                        # and a tie above zero
    cotangent = normal(1, reference_pool(x, window, stride).shape)
    np.testing.assert_array_equal(caffe_max_pool(x, window, stride), reference_pool(x, window, stride))
    np.testing.assert_array_equal(window_max_pool(x, window, stride), reference_pool(x, window, stride))
    pooled, backward = jax.vjp(lambda v: caffe_max_pool(v, window, stride), x)  # the differentiated form
    np.testing.assert_array_equal(pooled, reference_pool(x, window, stride))
    ours = backward(cotangent)[0]
    theirs = jax.vjp(lambda v: reference_pool(v, window, stride), x)[1](cotangent)[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(ours).sum()) > 0


def test_gradient_under_jit_and_second_call():
    x = normal(2, (2, 10, 10, 4))
    grad = jax.jit(jax.grad(lambda v: jnp.sum(caffe_max_pool(v, 3, 2) ** 2)))
    ref = jax.grad(lambda v: jnp.sum(reference_pool(v, 3, 2) ** 2))(x)
    np.testing.assert_allclose(grad(x), ref, rtol=1e-6)


def test_a_model_with_the_exported_graphs_pool_gives_the_same_beliefs():
    config = tiny_config(num_stages=3, input_size=40).model          # 40 -> 20 -> 10 -> 5
    image, center = normal(3, (2, 40, 40, 3)), normal(4, (2, 5, 5, 1))
    variables = cpm.CPM(config).init(jax.random.key(0), image, center)
    np.testing.assert_array_equal(cpm.CPM(config, pool=window_max_pool).apply(variables, image, center),
                                  cpm.CPM(config).apply(variables, image, center))
