"""The model's convolution: XLA's on GPUs and TPUs; on a CPU, each layer in the fastest of four
forms. A stride-1, undilated, ungrouped NHWC convolution at the default precision takes the first
that applies (`cpu_form` says which); anything else, on any platform, runs XLA's:

  * "dft" (`dft_conv`): overlap-save DFTs as matrix products, differentiated by JAX, for wide
    layers with large kernels: about 3.7 real multiply-adds per output pixel and channel pair for
    a 9x9 kernel (3 per frequency bin, 312 bins per 16x16 tile) instead of 81, for more memory
    traffic. Kernels of MIN_DFT_KERNEL to DFT_TILE + 1 taps a side, MIN_DFT_CHANNELS or more
    inputs and outputs, inputs at most MAX_DFT_SIDE a side, no negative pad, MIN_DFT_TILES or
    more output tiles in the batch, which the output fills to MIN_DFT_FILL: the paper model's
    128-channel 9x9 and 11x11 layers from 32x32 to 184x184 (16x16 from batch 16). Gradients of
    a layer whose windows' spectra pass MAX_KEPT_SPECTRA_BYTES recompute them instead of keeping
    them (`_dft_conv_keeping_inputs`).
  * "onednn" (`onednn.py`): oneDNN's kernels, forward and both gradients, for any other float32
    layer with pads 0 to kernel size - 1, where `onednn.setup()` loaded them (`runtime.setup()`
    -> `cpu.backend.setup()`).
  * "narrow": few input channels and multiply-adds per output pixel (MAX_ELEMENTWISE_INPUTS,
    MAX_ELEMENTWISE_MACS; the first layer) without oneDNN, where XLA:CPU's patch packing costs
    more than the arithmetic: a sum of shifted input channels times kernel rows that XLA fuses
    with the bias, ReLU and pool; differentiated, the patch matrix times the kernel (XLA would
    recompute the fused sum inside each consumer).
  * "xla": XLA's convolution.

Every form computes the same function to float32 rounding. Each threshold's reason and the
measurements behind it: docs/performance.md.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cpm_jax.cpu import onednn

# Thresholds of the dispatch rule (module docstring); the measurements behind each: docs/performance.md.
MAX_ELEMENTWISE_INPUTS = 4   # input channels of the narrow form: with more it is slower than XLA's
MAX_ELEMENTWISE_MACS = 1024  # multiply-adds per output pixel of the narrow form: break-even near 1,200
MIN_DFT_KERNEL = 9           # kernel taps a side (both sides): smaller kernels save fewer multiply-adds
MAX_DFT_SIDE = 184           # input pixels a side (both sides): the largest maps measured to gain
MIN_DFT_CHANNELS = 64        # input and output channels: fewer leave the transforms' cost unpaid
MIN_DFT_TILES = 16           # output tiles of the batch (batch x tiles an image): fewer leave the
                             # kernel's spectrum, the same size whatever the batch, unpaid
MIN_DFT_FILL = 0.65          # the output's share of its tiles' area (24x24 in 32x32: 0.56, no gain)
DFT_TILE = 16                # output pixels a side of an overlap-save tile: faster than 8 or 12
MAX_KEPT_SPECTRA_BYTES = 100 << 20  # a DFT layer's windows' spectra kept for its gradients, else
                                    # recomputed: memory (the 184x184 layers' pass 500 MB)
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated`, same arguments and result (`flax.linen.Conv(conv_general_dilated=...)`).

    A stride-1, undilated, ungrouped NHWC convolution at the default precision takes, on a CPU,
    the DFT form if it is wide with a large kernel on a mid-sized map, else oneDNN's kernels where
    loaded, else the narrow-layer forms if it has few inputs and multiply-adds per output pixel
    (module docstring)."""
    if precision is None and _is_plain(lhs, rhs, window_strides, lhs_dilation, rhs_dilation,
                                       dimension_numbers, feature_group_count, kwargs):
        pads = padding if not isinstance(padding, str) else lax.padtype_to_pads(
            lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
        pads = tuple(tuple(int(p) for p in pair) for pair in pads)
        return _FORMS[_cpu_form(lhs, rhs, pads)](lhs, rhs, pads)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs)


def cpu_form(input_shape, kernel_shape, pads, dtype=jnp.float32) -> str:
    """How `conv_general_dilated` runs a stride-1 NHWC convolution of an (B, H, W, C) input and a
    (kh, kw, C, O) kernel with `pads` ((top, bottom), (left, right)) on a CPU: "dft" (`dft_conv`),
    "onednn" (oneDNN's kernels), "narrow" (the narrow-layer forms) or "xla" (XLA's convolution)."""
    return _cpu_form(jax.ShapeDtypeStruct(input_shape, dtype), jax.ShapeDtypeStruct(kernel_shape, dtype),
                     tuple(tuple(int(p) for p in pair) for pair in pads))


def _cpu_form(lhs, rhs, pads) -> str:
    if _has_dft_form(lhs, rhs, pads):
        return "dft"
    if onednn.available() and onednn.supports(lhs, rhs, pads):
        return "onednn"
    return "narrow" if _is_narrow(rhs) else "xla"


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


def _has_dft_form(lhs, rhs, pads) -> bool:
    kh, kw, inputs, outputs = rhs.shape
    (out_h, out_w), rows, cols = _output_tiles(lhs.shape, rhs.shape, pads, DFT_TILE)
    return (MIN_DFT_KERNEL <= min(kh, kw) and max(kh, kw) <= DFT_TILE + 1
            and out_h * out_w >= MIN_DFT_FILL * rows * cols * DFT_TILE ** 2
            and max(lhs.shape[1:3]) <= MAX_DFT_SIDE and min(inputs, outputs) >= MIN_DFT_CHANNELS
            and min(p for pair in pads for p in pair) >= 0 and lhs.shape[0] * rows * cols >= MIN_DFT_TILES)


def _frequency_bins(kernel_shape, tile: int) -> tuple[int, int]:
    """(nh, G): `dft_conv`'s frequency bins of a window, along the height (complex) and the width
    (real DFT: G = nw // 2 + 1), for (tile + kh - 1, tile + kw - 1) = (nh, nw) windows."""
    return tile + kernel_shape[0] - 1, (tile + kernel_shape[1] - 1) // 2 + 1


def _output_tiles(input_shape, kernel_shape, pads, tile: int) -> tuple[tuple[int, int], int, int]:
    """((H', W') the output's size, rows, columns of `tile` x `tile` tiles covering it)."""
    (top, bottom), (left, right) = pads
    out_h = input_shape[1] + top + bottom - kernel_shape[0] + 1
    out_w = input_shape[2] + left + right - kernel_shape[1] + 1
    return (out_h, out_w), -(-out_h // tile), -(-out_w // tile)


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


def _dft_or_lax_conv(x, kernel, pads):
    """`dft_conv` on a CPU, XLA's convolution elsewhere; both differentiated by JAX."""
    return lax.platform_dependent(
        x, kernel, cpu=functools.partial(_dft_conv_float32, pads=pads, tile=DFT_TILE),
        default=functools.partial(_lax_conv, pads=pads))


def _dft_conv_float32(x, kernel, pads, tile):
    _, rows, cols = _output_tiles(x.shape, kernel.shape, pads, tile)
    # The three (nh, G, tiles, C) float32 spectra (`spectrum` in dft_conv) its gradients read.
    tiles = x.shape[0] * rows * cols
    spectra_bytes = 3 * math.prod(_frequency_bins(kernel.shape, tile)) * tiles * x.shape[3] * 4
    conv = _dft_conv_keeping_inputs if spectra_bytes > MAX_KEPT_SPECTRA_BYTES else dft_conv
    return conv(x.astype(jnp.float32), kernel.astype(jnp.float32), pads, tile).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dft_conv_keeping_inputs(x, kernel, pads, tile):
    """`dft_conv`, whose gradients keep only x and the kernel and recompute the windows'
    spectra, which would take too much memory where they pass MAX_KEPT_SPECTRA_BYTES
    (docs/performance.md; the backward pass says why not `jax.checkpoint`)."""
    return dft_conv(x, kernel, pads, tile)


def _keeping_inputs_forward(x, kernel, pads, tile):
    return dft_conv(x, kernel, pads, tile), (x, kernel)


def _keeping_inputs_backward(pads, tile, residuals, g):
    x, kernel = residuals
    # A dependence on g, so that XLA cannot merge the recomputed spectra with the forward pass's
    # (and keep those after all, as it did under jax.checkpoint and with x behind
    # lax.optimization_barrier: the same dot count and memory). A non-finite g[0, 0, 0, 0] makes
    # every gradient NaN, as autodiff's would be.
    x = x + 0 * g[0, 0, 0, 0]
    return jax.vjp(functools.partial(dft_conv, pads=pads, tile=tile), x, kernel)[1](g)


_dft_conv_keeping_inputs.defvjp(_keeping_inputs_forward, _keeping_inputs_backward)


def dft_conv(x, kernel, pads, tile: int):
    """`lax.conv_general_dilated` (stride 1, NHWC/HWIO, non-negative `pads`) by overlap-save DFTs
    written as matrix products.

    x (B, H, W, C) float32, kernel (kh, kw, C, O) -> (B, H', W', O). The output is cut into
    `tile` x `tile` tiles; each reads an (nh, nw) = (tile + kh - 1, tile + kw - 1) window of the
    padded input. The windows' 2-D DFTs (a real one along the width: G = nw // 2 + 1 frequencies,
    then a complex one along the height: nh) are products with DFT matrices, every window and
    channel at once; per frequency bin, the spectra (tiles * B, C) times the kernel's conjugate
    spectrum (C, O), complex as three real products, sum over the channels; inverse DFTs, again
    products, give each tile's first `tile` x `tile` values, the circular correlation's
    wrap-free part. Per output pixel and channel pair that is 3 nh G / tile**2 real multiply-adds
    (3.7 for 9x9 kernels and tile 16) instead of kh kw (81); the transforms cost O(C + O), not
    O(C O). Requires tile >= kernel size - 1 (a window is two tiles at most).
    """
    batch, height, width, channels = x.shape
    kh, kw, _, outputs = kernel.shape
    if tile < max(kh, kw) - 1:
        raise ValueError(f"dft_conv: tile {tile} is smaller than the kernel {kh}x{kw} less one")
    (top, _), (left, _) = pads
    (out_h, out_w), rows, cols = _output_tiles(x.shape, kernel.shape, pads, tile)
    nh, nw = tile + kh - 1, tile + kw - 1
    bins = _frequency_bins(kernel.shape, tile)
    tiles = batch * rows * cols
    m = {name: jnp.asarray(a) for name, a in _dft_matrices(kh, kw, tile).items()}
    with jax.named_scope("dft_conv"):
        padded = jnp.pad(x, ((0, 0), (top, (rows + 1) * tile - top - height),
                             (left, (cols + 1) * tile - left - width), (0, 0)))
        windows = _overlapping_windows(_overlapping_windows(padded, 1, tile, kh - 1), 3, tile, kw - 1)
        by_column = windows.transpose(4, 0, 1, 2, 3, 5).reshape(nw, -1)    # (v, B R u Cc C)
        half = (m["width"] @ by_column).reshape(2, bins[1], batch, rows, nh, cols, channels)
        half = half.transpose(0, 4, 1, 2, 3, 5, 6).reshape(2 * nh, -1)    # (re/im u, g B R Cc C)

        def spectrum(rows_of):       # (F, G, tiles, C): a part of the windows' spectra
            return (m[rows_of] @ half).reshape(*bins, tiles, channels)

        def kernel_spectrum(part):   # (F, G, C, O): a part of the kernel's conjugate spectrum
            return (m[part] @ kernel.reshape(kh * kw, -1)).reshape(*bins, channels, outputs)

        common = spectrum("height_sum") @ kernel_spectrum("kernel_real")       # (re + im) kr
        real = common - spectrum("height_imag") @ kernel_spectrum("kernel_sum")
        imag = common + spectrum("height_real") @ kernel_spectrum("kernel_difference")
        product = jnp.concatenate([real, imag]).reshape(2 * nh, -1)            # (re/im f, g tiles O)
        columns = (m["inverse_height"] @ product).reshape(2, tile, bins[1], batch, rows, cols, outputs)
        columns = columns.transpose(0, 2, 1, 3, 4, 5, 6).reshape(2 * bins[1], -1)
        out = (m["inverse_width"] @ columns).reshape(tile, tile, batch, rows, cols, outputs)
        out = out.transpose(2, 3, 1, 4, 0, 5).reshape(batch, rows * tile, cols * tile, outputs)
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


@functools.lru_cache(maxsize=None)
def _dft_matrices(kh: int, kw: int, tile: int) -> dict:
    """`dft_conv`'s constant float32 matrices for a kh x kw kernel and tile x tile tiles
    (nh = tile + kh - 1, nw = tile + kw - 1, G = nw // 2 + 1 width frequencies):
      width (2G, nw): the real DFT along the width, real parts over imaginary parts;
      height_real, height_imag, height_sum (nh, 2nh): the real part, imaginary part and their sum
        of the complex DFT along the height, applied to (real, imaginary) stacked;
      kernel_real, kernel_sum, kernel_difference (nh G, kh kw): the kernel's conjugate spectrum
        kr, kr + ki and ki - kr (the three products of a complex product);
      inverse_height (2 tile, 2nh): the inverse complex DFT along the height, first `tile` rows;
      inverse_width (tile, 2G): the inverse real DFT along the width, first `tile` columns."""
    nh, nw = tile + kh - 1, tile + kw - 1
    freq_h, freq_w = np.arange(nh), np.arange(nw // 2 + 1)
    angle = 2 * np.pi * np.outer(freq_w, np.arange(nw)) / nw
    width = np.concatenate([np.cos(angle), -np.sin(angle)])
    angle = 2 * np.pi * np.outer(freq_h, np.arange(nh)) / nh
    cos, sin = np.cos(angle), np.sin(angle)
    height_real, height_imag = np.concatenate([cos, sin], 1), np.concatenate([-sin, cos], 1)
    angle = 2 * np.pi * (freq_h[:, None, None, None] * np.arange(kh)[None, None, :, None] / nh
                         + freq_w[None, :, None, None] * np.arange(kw)[None, None, None, :] / nw)
    kernel_real = np.cos(angle).reshape(nh * len(freq_w), kh * kw)
    kernel_imag = np.sin(angle).reshape(nh * len(freq_w), kh * kw)
    angle = 2 * np.pi * np.outer(np.arange(tile), freq_h) / nh
    cos, sin = np.cos(angle) / nh, np.sin(angle) / nh
    inverse_height = np.block([[cos, -sin], [sin, cos]])
    weight = np.where((freq_w == 0) | (2 * freq_w == nw), 1.0, 2.0) / nw   # the half spectrum's
    angle = 2 * np.pi * np.outer(np.arange(tile), freq_w) / nw
    inverse_width = np.concatenate([np.cos(angle) * weight, -np.sin(angle) * weight], 1)
    matrices = dict(width=width, height_real=height_real, height_imag=height_imag,
                    height_sum=height_real + height_imag, kernel_real=kernel_real,
                    kernel_sum=kernel_real + kernel_imag, kernel_difference=kernel_imag - kernel_real,
                    inverse_height=inverse_height, inverse_width=inverse_width)
    return {name: a.astype(np.float32) for name, a in matrices.items()}


_FORMS = {"dft": _dft_or_lax_conv, "onednn": _onednn_conv, "narrow": _narrow_conv, "xla": _lax_conv}
