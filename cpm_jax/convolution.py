"""The model's convolution: `lax.conv_general_dilated`, except for narrow layers on a CPU.

XLA:CPU's convolution (Eigen) packs image patches for every output pixel, which costs far more
than the arithmetic when a layer has few input channels and few multiply-adds per output pixel:
the demo's first layer (3x3 kernel, 3 input channels, 16 outputs: 432 per pixel) ran at about a
third of PyTorch's speed. For such a layer on a CPU (GPUs and TPUs always run XLA's convolution,
`lax.platform_dependent`):

  * not differentiated (inference): a sum of shifted input channels times kernel rows, one
    elementwise pass that XLA fuses with the bias, ReLU and pooling after it. Measured on a
    2-core AMD EPYC Zen 3 (batch 8, 128x128 input, 3 input channels, forward): 3x3 to 16 outputs
    6.4 -> 1.4 ms, 3x3 to 32 5.8 -> 3.6 ms; break-even near 3x3 to 64 and 5x5 to 16
    (1,200-1,700 multiply-adds per pixel); 9x9 to 16 twice as slow (3,900); 8 input channels,
    3x3 to 16, twice as slow. Hence at most MAX_ELEMENTWISE_INPUTS input channels and
    MAX_ELEMENTWISE_MACS multiply-adds per output pixel. The demo's forward pass: 27 -> 22 ms.
  * differentiated (training): the patch matrix (B*H*W, kh*kw*C) times the (kh*kw*C, O) kernel,
    whose product XLA keeps as one array. The elementwise sum cannot be used there: XLA fuses it
    into, and recomputes it inside, each consumer (the ReLU mask within the pooling gradient: a
    3x3, 3-to-16 layer with its pooling took 17 instead of 10 ms to differentiate). The demo's
    training gradient: 94 -> 87 ms (median 104 -> 99) against XLA's convolution.

Gradients are XLA's convolution gradients (`jax.custom_vjp`).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

MAX_ELEMENTWISE_INPUTS = 4   # input channels; see the module docstring
MAX_ELEMENTWISE_MACS = 1024  # multiply-adds per output pixel
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, same arguments and result (`flax.linen.Conv(conv_general_dilated=...)`).

    A stride-1, undilated, ungrouped NHWC convolution with few inputs and multiply-adds per
    output pixel (module docstring) takes the narrow-layer forms on a CPU (float32 arithmetic
    there, whatever `precision` asks)."""
    if not _is_narrow(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                      feature_group_count, kwargs):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision, **kwargs)
    pads = padding if not isinstance(padding, str) else lax.padtype_to_pads(
        lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return _narrow_conv(lhs, rhs, tuple(tuple(p) for p in pads))


def _is_narrow(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, kwargs) -> bool:
    if (kwargs or feature_group_count != 1 or lhs.ndim != 4 or any(s != 1 for s in window_strides)
            or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))):
        return False
    if (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
        return False
    kh, kw, inputs, outputs = rhs.shape
    return inputs <= MAX_ELEMENTWISE_INPUTS and kh * kw * inputs * outputs <= MAX_ELEMENTWISE_MACS


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _narrow_conv(x, kernel, pads):
    """(B, H, W, C) x (kh, kw, C, O) -> (B, H', W', O), stride 1, `pads` ((top, bottom), (left, right))."""
    return lax.platform_dependent(x, kernel, cpu=functools.partial(_elementwise, pads=pads),
                                  default=functools.partial(_lax_conv, pads=pads))


def _lax_conv(x, kernel, pads):
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC)


def _windows(x, kernel_shape, pads) -> list:
    """The (B, H', W', C) input windows under each kernel tap (dy, dx), in row-major tap order."""
    kh, kw = kernel_shape[:2]
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    return [padded[:, dy:dy + out_h, dx:dx + out_w] for dy in range(kh) for dx in range(kw)]


def _elementwise(x, kernel, pads):
    """The convolution as a sum over kernel taps (dy, dx, c) of input channel c, shifted by
    (dy, dx), times kernel row (dy, dx, c, :); accumulated in float32."""
    kh, kw, channels, outputs = kernel.shape
    rows = kernel.astype(jnp.float32).reshape(kh * kw, channels, outputs)
    terms = [window[..., c:c + 1] * rows[tap, c]
             for tap, window in enumerate(_windows(x.astype(jnp.float32), kernel.shape, pads))
             for c in range(channels)]
    return functools.reduce(jnp.add, terms).astype(x.dtype)


def _patch_product(x, kernel, pads):
    """The convolution as (B, H', W', kh*kw*C) patches, channels minor, times the kernel."""
    kh, kw, channels, outputs = kernel.shape
    patches = jnp.concatenate(_windows(x, kernel.shape, pads), axis=-1)
    return jnp.dot(patches, kernel.reshape(kh * kw * channels, outputs),
                   preferred_element_type=jnp.float32).astype(x.dtype)


def _forward(x, kernel, pads):
    """Differentiated: the patch product on a CPU (module docstring)."""
    out = lax.platform_dependent(x, kernel, cpu=functools.partial(_patch_product, pads=pads),
                                 default=functools.partial(_lax_conv, pads=pads))
    return out, (x, kernel)


def _backward(pads, residuals, g):
    x, kernel = residuals
    _, vjp = jax.vjp(functools.partial(_lax_conv, pads=pads), x, kernel)
    return vjp(g)


_narrow_conv.defvjp(_forward, _backward)
