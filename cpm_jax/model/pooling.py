"""Caffe's 3x3 / stride-2 max pool (ceil rounding), written so that XLA compiles it well anywhere.

Forward: the elementwise maximum of the window's strided slices of the -inf padded input, which
XLA fuses with the ReLU before it (`caffe_max_pool`); XLA:CPU's reduce-window is several times
slower for this model's pools. Backward: XLA lowers the gradient of a max pool to
select-and-scatter, slow on a CPU; here it is written from strided comparisons, gathered per
input phase, with the same result, ties included (the first maximum in row-major window order
takes the gradient, as select-and-scatter does). Plain JAX: the same code on every device;
figures in docs/performance.md.
"""
import functools
import math

import jax
import jax.numpy as jnp


def _geometry(shape, window: int, stride: int):
    """Output (height, width) and bottom/right -inf padding of Caffe's ceil-mode pooling."""
    out = [math.ceil((size - window) / stride) + 1 for size in shape[1:3]]
    pads = [max(0, (o - 1) * stride + window - size) for o, size in zip(out, shape[1:3])]
    return out, pads


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def caffe_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Max pool (B, H, W, C) -> (B, ceil((H-window)/stride)+1, ..., C): 368 -> 184 -> 92 -> 46.

    The maximum of the window offsets' strided slices of x, each padded with -inf where windows
    overhang the bottom or right edge (Caffe's ceil mode): padding the slices rather than x lets
    XLA fuse the slices, their maximum and the ReLU before them into one pass that reads x once.
    `lax.slice`, not NumPy indexing: with a symbolic batch (an export) indexing becomes a gather
    that TFLite's converter refuses.
    Differentiated, `_forward` computes it."""
    (out_h, out_w), _ = _geometry(x.shape, window, stride)
    slices = []
    for dy in range(window):
        for dx in range(window):
            end_h, end_w = min(x.shape[1], dy + (out_h - 1) * stride + 1), min(x.shape[2], dx + (out_w - 1) * stride + 1)
            part = jax.lax.slice(x, (0, dy, dx, 0), (x.shape[0], end_h, end_w, x.shape[3]), (1, stride, stride, 1))
            slices.append(jnp.pad(part, ((0, 0), (0, out_h - part.shape[1]), (0, out_w - part.shape[2]), (0, 0)),
                                  constant_values=-jnp.inf))
    return functools.reduce(jnp.maximum, slices)


def _padded_copy_slices(x, window, stride) -> dict:
    """(dy, dx) -> the input pixel at offset (dy, dx) of every window, (B, out_h, out_w, C), as
    strided slices of one copy of x padded bottom/right with -inf. Under differentiation: the
    gradient compares every offset's slice with the output, and slices padded one by one as in
    `caffe_max_pool` were fused into each comparison (twice as slow);
    the forward pass (`_forward`) takes the same slices, so XLA keeps one padded copy for both."""
    (out_h, out_w), pads = _geometry(x.shape, window, stride)
    padded = jnp.pad(x, ((0, 0), (0, pads[0]), (0, pads[1]), (0, 0)), constant_values=-jnp.inf)
    span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    return {(dy, dx): padded[:, dy:dy + span_h:stride, dx:dx + span_w:stride]
            for dy in range(window) for dx in range(window)}


def _forward(x, window, stride):
    y = functools.reduce(jnp.maximum, _padded_copy_slices(x, window, stride).values())
    return y, (x, y)


def _backward(window, stride, residuals, g):
    """Each window's gradient goes to its first maximum (row-major window order), gathered per
    input phase: input row stride * a + r is offset r + k * stride of window a - k (k = 0, 1, ..),
    and likewise for columns, so the gradient of the stride x stride phases is a sum of shifted
    (B, out_h, out_w, C) arrays, interleaved once at the end (no full-size array per offset)."""
    x, y = residuals
    pixels = _padded_copy_slices(x, window, stride)
    taken = jnp.zeros(y.shape, bool)
    zero = jnp.array(0, g.dtype)
    routed = {}  # (dy, dx) -> g where offset (dy, dx) is the window's first maximum, else 0
    for dy in range(window):
        for dx in range(window):
            first_max = (pixels[dy, dx] == y) & ~taken
            taken = taken | first_max
            routed[dy, dx] = jnp.where(first_max, g, zero)
    extra = -(-window // stride) - 1  # windows before a's that reach phase a: ceil(window/stride) - 1
    phases = [[sum(jnp.pad(routed[ry + ky * stride, rx + kx * stride],
                           ((0, 0), (ky, extra - ky), (kx, extra - kx), (0, 0)))
                   for ky in range(extra + 1) if ry + ky * stride < window
                   for kx in range(extra + 1) if rx + kx * stride < window)
               for rx in range(stride)] for ry in range(stride)]
    # (B, out_h + extra, stride, out_w + extra, stride, C) -> rows, columns in input order.
    grad = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
    batch, rows, _, cols, _, channels = grad.shape
    grad = grad.reshape(batch, rows * stride, cols * stride, channels)
    return (grad[:, :x.shape[1], :x.shape[2]],)


caffe_max_pool.defvjp(_forward, _backward)


def window_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """`caffe_max_pool`'s result, bit for bit, as one reduce-window over x padded bottom/right
    with -inf: what TFLite's converter turns into MAX_POOL_2D and tf2onnx into MaxPool, where the
    strided slices stay nine slices and eight maxima. For exported graphs only: XLA:CPU runs the
    reduce-window several times slower, and differentiates it by select-and-scatter."""
    _, pads = _geometry(x.shape, window, stride)
    return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1), ((0, 0), (0, pads[0]), (0, pads[1]), (0, 0)))
