"""The model's convolution equals XLA's, in values and gradients, on whichever path it takes."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cpm_jax import architecture, convolution, model as cpm_model
from tests.conftest import normal
from tests.test_paper_defaults import experiment

NHWC = ("NHWC", "HWIO", "NHWC")


def both(x, kernel, padding, **kwargs):
    ours = convolution.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC, **kwargs)
    theirs = lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC, **kwargs)
    return ours, theirs


def takes_narrow_path(x, kernel, padding="SAME") -> bool:
    """Whether the compiled CPU forward has no convolution left (the elementwise form)."""
    fn = jax.jit(lambda a, b: convolution.conv_general_dilated(a, b, (1, 1), padding, dimension_numbers=NHWC))
    return "convolution(" not in fn.lower(x, kernel).compile().as_text()


@pytest.mark.parametrize("kernel_shape, padding", [
    ((3, 3, 3, 16), "SAME"), ((5, 5, 3, 8), "SAME"), ((2, 2, 3, 4), "SAME"), ((3, 3, 1, 5), "VALID"),
    ((3, 3, 3, 16), ((2, 0), (1, 1))), ((1, 1, 4, 32), "SAME")])
def test_narrow_layers_match_xla(kernel_shape, padding):
    x = normal(0, (2, 13, 11, kernel_shape[2]))
    kernel = normal(1, kernel_shape)
    assert takes_narrow_path(x, kernel, padding)
    ours, theirs = jax.jit(functools.partial(both, padding=padding))(x, kernel)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bfloat16_keeps_its_dtype_and_accumulates_in_float32():
    x = normal(2, (2, 16, 16, 3), jnp.bfloat16)
    kernel = normal(3, (3, 3, 3, 16), jnp.bfloat16)
    ours, _ = both(x, kernel, "SAME")
    exact = lax.conv_general_dilated(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), "SAME",
                                     dimension_numbers=NHWC)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours.astype(jnp.float32), exact, rtol=1e-2, atol=5e-2)


def test_gradients_match_xlas_and_training_uses_the_patch_product():
    x = normal(4, (2, 12, 12, 3))
    kernel = normal(5, (3, 3, 3, 16))
    cotangent = normal(6, (2, 12, 12, 16))

    def grads(conv):
        fn = jax.jit(jax.grad(lambda a, b: jnp.sum(jax.nn.relu(conv(a, b)) * cotangent), argnums=(0, 1)))
        return fn(x, kernel), fn.lower(x, kernel).compile().as_text()

    (ours, hlo), (theirs, _) = [grads(lambda a, b, f=f: f(a, b, (1, 1), "SAME", dimension_numbers=NHWC))
                                for f in (convolution.conv_general_dilated, lax.conv_general_dilated)]
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o, t, rtol=1e-5, atol=1e-5)
    # Forward: the patch product (a dot), no (2, 12, 12, 16) convolution; the two gradient
    # convolutions remain (input: (2, 12, 12, 3); kernel).
    assert "f32[2,12,12,16]{3,2,1,0} convolution(" not in hlo
    assert hlo.count(" convolution(") == 2


@pytest.mark.parametrize("kernel_shape, kwargs", [
    ((9, 9, 3, 128), {}),                       # too many multiply-adds per pixel
    ((3, 3, 8, 16), {}),                        # too many input channels
    ((3, 3, 3, 16), {"rhs_dilation": (2, 2)}),  # dilated
    ((3, 3, 1, 12), {"feature_group_count": 3}),
])
def test_other_layers_go_to_xla_unchanged(kernel_shape, kwargs):
    channels = kernel_shape[2] * kwargs.get("feature_group_count", 1)
    x = normal(7, (1, 12, 12, channels))
    kernel = normal(8, kernel_shape)
    ours, theirs = both(x, kernel, "SAME", **kwargs)
    np.testing.assert_array_equal(ours, theirs)
    if not kwargs:
        assert not takes_narrow_path(x, kernel)


def test_model_uses_it_for_the_first_layer_only():
    """The demo model's inference has exactly two convolutions fewer in its compiled HLO (the
    two image-trunk first layers, 3 -> 16 channels, 3x3) than its layer list has."""
    m = experiment("synthetic").model
    model = cpm_model.CPM(m)
    image = jnp.zeros((1, m.input_size, m.input_size, 3))
    center = jnp.zeros((1, m.input_size // 8, m.input_size // 8, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), image, center)["params"])
    hlo = jax.jit(lambda p: model.apply({"params": p}, image, center)).lower(params).compile().as_text()
    layers = (2 * architecture.image_trunk(m) + architecture.stage1_head(m)
              + (m.num_stages - 1) * (architecture.refinement_features(m) + architecture.refinement_head(m)))
    convs = sum(isinstance(layer, architecture.Conv) for layer in layers)
    # 1x1 convolutions become dots
    ones = sum(isinstance(layer, architecture.Conv) and layer.kernel == 1 for layer in layers)
    assert hlo.count(" convolution(") == convs - ones - 2
