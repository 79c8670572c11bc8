"""The model's convolution: `lax.conv_general_dilated` on GPUs and TPUs; on a CPU, DFTs as matrix
products for large layers, oneDNN's kernels for the others.

On a CPU, wide layers with large kernels (MIN_DFT_KERNEL or more taps a side, at most DFT_TILE + 1,
MIN_DFT_CHANNELS or more input and output channels, maps of at most MAX_DFT_SIDE pixels a side,
MIN_DFT_TILES or more output tiles in the batch, which the output fills to MIN_DFT_FILL or more,
stride 1, no negative padding: the paper model's 9x9 and 11x11 128-channel layers from 32x32 to
184x184, and its 16x16 ones in batches of 16 or more) run as
`dft_conv`, forward and gradients (by JAX's autodiff of its matrix products): per output pixel and
channel pair about 3.7 real multiply-adds (3 per frequency bin, 312 bins per 16x16 tile of a 9x9
kernel) instead of the kernel's 81 or 121, at the price of memory traffic (the windows' spectra are
1.2x the input, the kernel's 3 x 312 bins x C x O). Measured on a 2-core AMD EPYC Zen 5 (batch 8, ms
forward / forward with gradients, oneDNN -> DFT, one process): 64x64x128 -> 128 9x9 230 / 461 -> 170
/ 282; 46x46x128 -> 128 11x11 162 / 340 -> 158 / 271; 92x92x128 -> 128 9x9 448 / 1278 -> 350 / 606.
The paper-width training step at 128x128 2.90 -> 1.96 s (medians, alternating in one process), its
inference 0.95 -> 0.71-0.78 s; the 368x368 step 23.1 -> 21.5 s, peak host memory 4.97 -> 6.46 GB
(with the 92x92 layers left to oneDNN: 25.3 s, 6.15 GB). Left to oneDNN because even or slower
there: 48 input channels (46x46x48 -> 128 11x11: 56 / 120 -> 79 / 104), the 128x128 first layer (3
input channels), maps over 184 a side (the 368x368 first layers have 3 input channels anyway),
tiles the output fills poorly (24x24x128 -> 128 9x9 by batch 8, 56% of 4 tiles an image: 34 / 62
-> 36 / 62; 28x28, 77%: 44 / 81 -> 29 / 61; 40x40, 69%: 93 / 179 -> 58 / 104) and batches of
fewer tiles (below). An earlier form (`jnp.fft.rfft2` tiles, 2026-12-02, used for gradients only) was
slower than XLA's convolution forward (246 against 210 ms for the 64x64 layer): XLA's FFTs and the
complex arrays' layout changes cost more than the products. DFT_TILE = 16 against 8 and 12 (ms
forward / with gradients): the 64x64 layer 157 / 250 against 254 / 393 and 242 / 383, the 32x32 one
67 / 104 against 79 / 107 and 83 / 126. Fewer tiles in the batch leave the kernel's spectrum (the
same size whatever the batch) to too few images. Measured again once oneDNN's kernels cut small
batches into bands of rows and computations ran inline (`runtime.run_cpu_computations_inline`;
2026-12-03, ms forward / forward with gradients, oneDNN -> DFT): 32x32x128 -> 128 9x9 (4 tiles an
image) by batch 1, 2, 4, 8: 9 / 20 -> 13 / 34, 23 / 29 -> 19 / 38, 29 / 57 -> 20 / 52, 45 / 97
-> 23 / 60; 46x46x128 -> 128 11x11 (9) by batch 1, 2, 4: 24 / 51 -> 22 / 57, 44 / 87 -> 30 / 71,
82 / 158 -> 42 / 76; 64x64 (16) by batch 1: 35 / 67 -> 20 / 51; 16x16x128 -> 128 11x11 (1) by
batch 8, 16, 32: 22 / 41 -> 21 / 49, 38 / 66 -> 27 / 53, 85 / 144 -> 45 / 84. Hence 16 tiles (the
32x32 layers took oneDNN's kernels until then: 51 / 104 -> 68 / 110 in an earlier measurement,
before the DFT's products and XLA's buffers got faster).

The gradients of a DFT layer whose windows' spectra pass MAX_KEPT_SPECTRA_BYTES (at batch 8 the
92x92 and 184x184 layers: 138 and 552 MB; the 64x64 ones: 61 MB) keep its input and kernel, not the
spectra, and recompute those (`_dft_conv_keeping_inputs`; `jax.checkpoint` did not shed them: XLA
merged the recomputation with the forward pass). The spectra of the 184x184 layers would take the
368x368 batch-8 training step from 6.5 GB of host memory to 7.7 GB; recomputed, it takes 7.0 GB and
10.9 s (25 s with those layers on oneDNN, 12.0 s with the spectra kept). The 184x184x128 -> 128 9x9
layer by batch 2, oneDNN -> DFT: 458 / 1358 -> 258 / 484 ms; the paper model's 368x368 inference 7.0
-> 3.8 s for a batch of 8 (PyTorch 6.9 s), 1.0 -> 0.73 s for one image (PyTorch 0.92 s). At 128x128
(the 64x64 layers), where memory is no concern, recomputing may cost a little (the paper-width
gradient 1748 against 1768 ms, 1695 against 1762, medians of 6 and 12 alternating), hence the
threshold.

Every other stride-1 float32 NHWC convolution with pads from 0 to the kernel's size - 1 runs on
oneDNN where `onednn.setup()` loaded its kernels (Linux x86-64 with the `cpu` extra; every entry
point's `runtime.setup()` does it), forward and both gradients (`_onednn_conv`), as PyTorch's do.
Measured (batch 8, ms forward / forward with gradients, XLA -> oneDNN): 128x128x16 -> 16 3x3
4.0 / 9.9 -> 2.4 / 3.9; 16x16x32 -> 32 7x7 0.82 / 1.9 -> 0.43 / 0.78; 64x64x128 -> 128 9x9
249 / 505 -> 230 / 406. The demo's training step 66.1 -> 50.0 ms (medians of 200 steps; before
`runtime.keep_freed_memory`, which took it to 28 ms). Elsewhere on a CPU (another platform,
bfloat16, the kernels not built), the narrow forms below.

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
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cpm_jax import onednn

MAX_ELEMENTWISE_INPUTS = 4   # input channels; see the module docstring
MAX_ELEMENTWISE_MACS = 1024  # multiply-adds per output pixel
MIN_DFT_KERNEL = 9           # kernel taps a side (both sides)
MAX_DFT_SIDE = 184           # input pixels a side (both sides)
MIN_DFT_CHANNELS = 64        # input and output channels
MIN_DFT_TILES = 16           # output tiles of the batch (batch x tiles an image)
MIN_DFT_FILL = 0.65          # the output's share of its tiles' area (24x24 in 32x32: 0.56)
DFT_TILE = 16                # output pixels a side of an overlap-save tile
MAX_KEPT_SPECTRA_BYTES = 100 << 20  # a DFT layer's windows' spectra kept for its gradients, else recomputed
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
    spectra (the module docstring says why)."""
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
