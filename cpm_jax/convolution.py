"""The model's convolution: `lax.conv_general_dilated` on GPUs and TPUs; on a CPU, oneDNN's.

On a CPU where `onednn.setup()` loaded oneDNN's kernels (Linux x86-64 with the `cpu` extra; every
entry point's `runtime.setup()` does it), every stride-1 float32 NHWC convolution with pads from 0
to the kernel's size - 1 runs on oneDNN, forward and both gradients (`_onednn_conv`), as PyTorch's
do. Measured on a 2-core AMD EPYC Zen 5 (batch 8, ms forward / forward with gradients, XLA ->
oneDNN, one process): 128x128x16 -> 16 3x3 4.0 / 9.9 -> 2.4 / 3.9; 16x16x32 -> 32 7x7
0.82 / 1.9 -> 0.43 / 0.78; 64x64x128 -> 128 9x9 249 / 505 -> 230 / 406. Whole training steps,
alternating in one process: the demo 66.1 -> 50.0 ms (medians of 200 steps; before
`runtime.keep_freed_memory`, which took it to 28 ms); the paper widths at 128x128 3.54 (with the
FFT gradients below) -> 3.22 s; at 368x368 24.5 s a step in 5.0 GB of host memory (the day
before, with the FFT gradients: 27.5 s, 6.6 GB). Elsewhere on a CPU (another platform, bfloat16,
the kernels not built), the forms below.

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

Gradients are XLA's convolution gradients (`jax.custom_vjp`), except for wide layers with large
kernels on mid-sized maps (MIN_FFT_KERNEL to FFT_TILE + 1 taps a side, MIN_FFT_SIDE to
MAX_FFT_SIDE pixels a side, MIN_FFT_CHANNELS or more input and output channels, stride 1, no
negative padding): on a CPU theirs are the gradients of the same convolution computed with FFTs
(`fft_conv`: overlap-save tiles of FFT_TILE output pixels a side; per frequency, the sum over
channels as real matrix products). The forward pass stays XLA's convolution, so outputs are
unchanged; the gradients agree with XLA's to float32 rounding (relative 1e-5). Measured on a
2-core AMD EPYC Zen 5 (batch 8; one layer's forward and gradients, XLA -> FFT gradients): 9x9 on
64x64, 128 to 128 channels, 551 -> 336 ms; 11x11 on 46x46, 128 to 128 424 -> 300 ms, 48 to 128 227
-> 109 ms; 9x9 on 46x46, 32 to 512 462 -> 223 ms. The paper-width training step (6 stages,
128x128: the two 64x64 layers) 3.15 -> 2.97 s, at 368x368 (the 46x46 layers) 30.2 -> 27.5 s
(medians, the two alternating in one process), peak host memory 5.4 -> 6.6 GB. Left to XLA because
they were slower or even: 9x9 on 32x32 (135 -> 128 ms), 11x11 on 16x16 (51 -> 147 ms), 7x7 and 5x5
on 46x46 (166 -> 154, 31 -> 60 ms), 3 input channels (the first layer, 143 -> 403 ms), 16 channels
(7x7 on 64x64, 11 -> 17 ms), and maps over 64 pixels a side: alone the 92x92 and 184x184 layers'
gradients looked 3-4x faster, but with them the 368x368 step was no faster (26.0 s) and took 8.4
GB (their tiles' spectra are large, and main memory moves about 6 GB/s on these machines). The FFT
forward pass is no faster than XLA's (64x64: 246 against 210 ms). Kernels wider than FFT_TILE + 1
would need larger tiles (`fft_conv` requires tile >= kernel - 1): left to XLA.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cpm_jax import onednn

MAX_ELEMENTWISE_INPUTS = 4   # input channels; see the module docstring
MAX_ELEMENTWISE_MACS = 1024  # multiply-adds per output pixel
MIN_FFT_KERNEL = 9           # kernel taps a side (both sides)
MIN_FFT_SIDE, MAX_FFT_SIDE = 40, 64  # input pixels a side (both sides)
MIN_FFT_CHANNELS = 32        # input and output channels
FFT_TILE = 16                # output pixels a side of an overlap-save tile
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, same arguments and result (`flax.linen.Conv(conv_general_dilated=...)`).

    A stride-1, undilated, ungrouped NHWC convolution at the default precision takes, on a CPU,
    the narrow-layer forms if it has few inputs and multiply-adds per output pixel, and FFT
    gradients if it is wide with a large kernel on a mid-sized map (module docstring)."""
    if precision is None and _is_plain(lhs, rhs, window_strides, lhs_dilation, rhs_dilation,
                                       dimension_numbers, feature_group_count, kwargs):
        pads = padding if not isinstance(padding, str) else lax.padtype_to_pads(
            lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
        pads = tuple(tuple(int(p) for p in pair) for pair in pads)
        if onednn.available() and onednn.supports(lhs, rhs, pads):
            return _onednn_conv(lhs, rhs, pads)
        if _is_narrow(rhs):
            return _narrow_conv(lhs, rhs, pads)
        if _has_fft_gradients(lhs, rhs, pads):
            return _fft_gradient_conv(lhs, rhs, pads)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs)


def _is_plain(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, kwargs) -> bool:
    """A stride-1, undilated, ungrouped NHWC convolution."""
    if (kwargs or feature_group_count != 1 or lhs.ndim != 4 or any(s != 1 for s in window_strides)
            or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))):
        return False
    return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def _is_narrow(rhs) -> bool:
    kh, kw, inputs, outputs = rhs.shape
    return inputs <= MAX_ELEMENTWISE_INPUTS and kh * kw * inputs * outputs <= MAX_ELEMENTWISE_MACS


def _has_fft_gradients(lhs, rhs, pads) -> bool:
    kh, kw, inputs, outputs = rhs.shape
    return (MIN_FFT_KERNEL <= min(kh, kw) and max(kh, kw) <= FFT_TILE + 1
            and MIN_FFT_SIDE <= min(lhs.shape[1:3])
            and max(lhs.shape[1:3]) <= MAX_FFT_SIDE
            and min(inputs, outputs) >= MIN_FFT_CHANNELS and min(p for pair in pads for p in pair) >= 0)


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


def _lax_gradients(x, kernel, g, pads):
    _, vjp = jax.vjp(functools.partial(_lax_conv, pads=pads), x, kernel)
    return vjp(g)


def _backward(pads, residuals, g):
    x, kernel = residuals
    return _lax_gradients(x, kernel, g, pads)


_narrow_conv.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _onednn_conv(x, kernel, pads):
    """oneDNN's convolution on a CPU, XLA's elsewhere (`lax.platform_dependent`); likewise the gradients."""
    return lax.platform_dependent(x, kernel, cpu=functools.partial(onednn.forward, pads=pads),
                                  default=functools.partial(_lax_conv, pads=pads))


def _onednn_forward(x, kernel, pads):
    return _onednn_conv(x, kernel, pads), (x, kernel)


def _onednn_backward(pads, residuals, g):
    x, kernel = residuals
    return lax.platform_dependent(x, kernel, g, cpu=functools.partial(onednn.gradients, pads=pads),
                                  default=functools.partial(_lax_gradients, pads=pads))


_onednn_conv.defvjp(_onednn_forward, _onednn_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fft_gradient_conv(x, kernel, pads):
    """XLA's convolution, whose gradients on a CPU are `fft_conv`'s (module docstring)."""
    return _lax_conv(x, kernel, pads)


def _fft_gradient_forward(x, kernel, pads):
    return _lax_conv(x, kernel, pads), (x, kernel)


def _fft_gradients(x, kernel, g, pads):
    """`fft_conv`'s gradients, in float32, cast back to the dtypes of `x` and `kernel`."""
    f32 = [a.astype(jnp.float32) for a in (x, kernel, g)]
    _, vjp = jax.vjp(functools.partial(fft_conv, pads=pads, tile=FFT_TILE), *f32[:2])
    dx, dkernel = vjp(f32[2])
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


def _fft_gradient_backward(pads, residuals, g):
    x, kernel = residuals
    return lax.platform_dependent(x, kernel, g, cpu=functools.partial(_fft_gradients, pads=pads),
                                  default=functools.partial(_lax_gradients, pads=pads))


_fft_gradient_conv.defvjp(_fft_gradient_forward, _fft_gradient_backward)


def fft_conv(x, kernel, pads, tile: int):
    """`lax.conv_general_dilated` (stride 1, NHWC/HWIO, non-negative `pads`) by overlap-save FFTs.

    x (B, H, W, C) float32, kernel (kh, kw, C, O) -> (B, H', W', O). The output is cut into
    `tile` x `tile` tiles; each reads a (tile + kh - 1, tile + kw - 1) window of the padded input,
    whose real FFT times the conjugate spectrum of the kernel, summed over channels (per frequency,
    a (tiles * B, C) x (C, O) product, complex as three real ones), transforms back to that tile.
    """
    batch, height, width, channels = x.shape
    kh, kw, _, outputs = kernel.shape
    (top, bottom), (left, right) = pads
    out_h, out_w = height + top + bottom - kh + 1, width + left + right - kw + 1
    rows, cols = -(-out_h // tile), -(-out_w // tile)
    nh, nw = tile + kh - 1, tile + kw - 1
    if tile < max(kh, kw) - 1:
        raise ValueError(f"fft_conv: tile {tile} is smaller than the kernel {kh}x{kw} less one")
    padded = jnp.pad(x, ((0, 0), (top, (rows + 1) * tile - top - height),
                         (left, (cols + 1) * tile - left - width), (0, 0)))
    windows = _overlapping_windows(_overlapping_windows(padded, 1, tile, kh - 1), 3, tile, kw - 1)
    spectra = jnp.fft.rfft2(windows, axes=(2, 4))  # (B, rows, nh, cols, nw/2+1, C)
    spectra = spectra.transpose(4, 2, 1, 3, 0, 5).reshape(-1, rows * cols * batch, channels)
    kr, ki = _kernel_spectrum(kernel, nh, nw)                                   # (bins, C, O) each
    xr, xi = spectra.real, spectra.imag
    common = (xr + xi) @ kr                         # (xr + i xi)(kr + i ki) in 3 real products
    real = common - xi @ (kr + ki)
    imag = common + xr @ (ki - kr)
    product = lax.complex(real, imag).reshape(nw // 2 + 1, nh, rows, cols, batch, outputs)
    tiles = jnp.fft.irfft2(product.transpose(4, 2, 1, 3, 0, 5), s=(nh, nw), axes=(2, 4))
    out = tiles[:, :, :tile, :, :tile].reshape(batch, rows * tile, cols * tile, outputs)
    return out[:, :out_h, :out_w]


def _overlapping_windows(x, axis: int, step: int, overlap: int):
    """Windows of `step + overlap` along `axis`, `step` apart, as a new axis after it: x of length
    (n + 1) * step there -> (..., n, step + overlap, ...). From two whole-array slices (rather than
    one slice per window), so that the gradient is two pads, not one per window."""
    blocks = x.reshape(x.shape[:axis] + (-1, step) + x.shape[axis + 1:])
    head = lax.slice_in_dim(blocks, 0, blocks.shape[axis] - 1, axis=axis)
    tail = lax.slice_in_dim(blocks, 1, blocks.shape[axis], axis=axis)
    tail = lax.slice_in_dim(tail, 0, overlap, axis=axis + 1)
    return jnp.concatenate([head, tail], axis=axis + 1)


def _kernel_spectrum(kernel, nh: int, nw: int):
    """Real and imaginary parts of the conjugate 2-D real FFT of `kernel` zero-padded to (nh, nw):
    (bins, C, O) each, bins ordered (column frequency, row frequency) as `fft_conv` orders the
    input's. Computed as products with (frequencies, taps) DFT matrices: the kernel is small."""
    kh, kw, channels, outputs = kernel.shape
    col_cos, col_sin = _dft_matrix(nw, kw, nw // 2 + 1)    # (G, kw)
    row_cos, row_sin = _dft_matrix(nh, kh, nh)             # (F, kh)
    by_column = kernel.transpose(1, 0, 2, 3).reshape(kw, -1)                    # (kw, kh * C * O)
    tr = (col_cos @ by_column).reshape(-1, kh, channels * outputs)             # (G, kh, C * O)
    ti = (col_sin @ by_column).reshape(-1, kh, channels * outputs)
    real = row_cos @ tr - row_sin @ ti                                          # (G, F, C * O)
    imag = row_cos @ ti + row_sin @ tr
    return real.reshape(-1, channels, outputs), imag.reshape(-1, channels, outputs)


def _dft_matrix(n: int, taps: int, frequencies: int):
    """cos and sin of 2 pi f u / n, (frequencies, taps): exp(+i ...), the conjugate DFT."""
    angle = 2 * np.pi * np.outer(np.arange(frequencies), np.arange(taps)) / n
    return jnp.asarray(np.cos(angle), jnp.float32), jnp.asarray(np.sin(angle), jnp.float32)
