"""From belief maps to joint positions (docs/paper_notes.md section 5).

Single scale, crop frame (training's held-out evaluation, evaluation.py): `upsample` (x8 bicubic),
`argmax_joints`, `stage_joints`, `crop_to_image`. Multi-scale, original-image frame (multiscale.py):
`resampling_matrix` / `resample_sum` (cells straight to original pixels, summed over scales),
`masked_argmax` (a padded canvas), `refine_quadratic` (optional sub-pixel arg-max)."""
import jax
import jax.numpy as jnp
import numpy as np

from cpm_jax.model import architecture


def upsample(beliefs: jax.Array, factor: int = architecture.STRIDE) -> jax.Array:
    """Bicubic x`factor`: (..., h, w, C) cells -> (..., h*f, w*f, C) input pixels.

    With half-pixel centres cell g lands on input pixel 3.5 + 8g, the cell's centre."""
    h, w, c = beliefs.shape[-3:]
    return jax.image.resize(beliefs, beliefs.shape[:-3] + (h * factor, w * factor, c), method="cubic")


def argmax_joints(maps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(..., H, W, P) maps -> ((..., P, 2) arg-max (x, y) in pixels of the map, (..., P) peak value)."""
    h, w, p = maps.shape[-3:]
    flat = maps.reshape(maps.shape[:-3] + (h * w, p))
    best = jnp.argmax(flat, axis=-2)
    peak = jnp.take_along_axis(flat, best[..., None, :], axis=-2)[..., 0, :]
    return jnp.stack([best % w, best // w], axis=-1).astype(jnp.float32), peak


def stage_joints(beliefs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every stage's joints in crop pixels: (B, T, h, w, P+1) -> ((B, T, P, 2), (B, T, P))."""
    return argmax_joints(upsample(beliefs[..., :-1]))


def crop_to_image(joints: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Maps (B, ..., P, 2) crop pixels to original-image pixels with (B, 2, 3) affines."""
    joints = np.asarray(joints)
    affine = np.asarray(affine).reshape((affine.shape[0],) + (1,) * (joints.ndim - 3) + (2, 3))
    return np.einsum("...ij,...pj->...pi", affine[..., :2], joints) + affine[..., None, :, 2]


# ------------------------------------------------------------------ belief maps -> original frame
# Continuous coordinates: pixel (or cell) i of an axis spans [i, i + 1], its centre is i + 0.5.
# A map resampled "with scale s and translation t" has its input coordinate u_in land on the
# output coordinate u_out = s * u_in + t (jax.image.scale_and_translate's convention).

def cubic_kernel(x: jax.Array) -> jax.Array:
    """Keys' cubic convolution kernel with a = -0.5, as jax.image's "cubic" (and `upsample`)."""
    x = jnp.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return jnp.where(x >= 2.0, 0.0, jnp.where(x >= 1.0, far, near))


def resampling_matrix(out_size: int, in_size: int, scale: jax.Array, translation: jax.Array) -> jax.Array:
    """(out_size, in_size) bicubic weights along one axis: row i holds the weights of the input
    samples for output sample i under u_out = scale * u_in + translation (no antialiasing).

    Samples beyond the input's ends repeat the edge sample (edge replication, as OpenCV's and
    MATLAB's bicubic resize that the release used; jax.image's "cubic" renormalises instead), and a
    row whose sample point lies outside the input ([-0.5, in_size - 0.5] in input samples) is 0,
    so everything outside the input's extent gets no belief. `scale`, `translation`: traced
    scalars are fine (one matrix per example and scale under vmap)."""
    sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5 - translation) / scale - 0.5
    extended = jnp.arange(-2, in_size + 2, dtype=jnp.float32)      # the kernel's reach is 2 samples
    weights = cubic_kernel(sample[:, None] - extended[None, :])      # (out, in + 4), rows sum to 1
    weights = jnp.concatenate([weights[:, :3].sum(1, keepdims=True), weights[:, 3:-3],
                               weights[:, -3:].sum(1, keepdims=True)], axis=1) if in_size > 1 else \
        weights.sum(1, keepdims=True)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    return jnp.where(inside[:, None], weights, 0.0)


def resample_sum(maps: jax.Array, scale: jax.Array, translation: jax.Array,
                 out_shape: tuple[int, int]) -> jax.Array:
    """Resamples K maps into one output frame and sums them (the multi-scale sum).

    maps: (K, ..., h, w, C) in cells; scale, translation: (K, 2) per map, (x, y), from cell
    coordinates to output coordinates (see above); out_shape: (H, W) static.
    Returns (..., H, W, C): sum over k of maps[k] resampled, computed as two matrix products per
    map (x first), never materialising the K resampled maps."""
    h, w = maps.shape[-3:-1]
    height, width = out_shape
    wx = jax.vmap(lambda s, t: resampling_matrix(width, w, s, t))(scale[:, 0], translation[:, 0])
    wy = jax.vmap(lambda s, t: resampling_matrix(height, h, s, t))(scale[:, 1], translation[:, 1])
    hi = jax.lax.Precision.HIGHEST   # no TF32 on GPUs: the maps' small differences decide the arg-max
    along_x = jnp.einsum("k...hwc,kxw->k...hxc", maps, wx, precision=hi)
    return jnp.einsum("kyh,k...hxc->...yxc", wy, along_x, precision=hi)


def masked_argmax(maps: jax.Array, height: jax.Array, width: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`argmax_joints` over the top-left (height, width) of a padded canvas (..., H, W, P);
    height and width may be traced. Returns ((..., P, 2) (x, y) pixels, (..., P) peak values)."""
    rows = jnp.arange(maps.shape[-3])[:, None, None] < height
    cols = jnp.arange(maps.shape[-2])[None, :, None] < width
    return argmax_joints(jnp.where(rows & cols, maps, -jnp.inf))


def refine_quadratic(maps: jax.Array, joints: jax.Array, height: jax.Array, width: jax.Array) -> jax.Array:
    """Sub-pixel refinement: along x and along y separately, the vertex of the parabola through the
    arg-max and its two neighbours, clipped to +-0.5 px; no shift where a neighbour lies outside the
    (height, width) image or the peak is not a strict maximum.

    maps: (H, W, P); joints: (P, 2) integer-valued (x, y) arg-max pixels. Returns (P, 2) float32."""
    x, y = joints[:, 0].astype(jnp.int32), joints[:, 1].astype(jnp.int32)
    p = jnp.arange(maps.shape[-1])
    value = lambda yy, xx: maps[jnp.clip(yy, 0, maps.shape[0] - 1), jnp.clip(xx, 0, maps.shape[1] - 1), p]

    def shift(minus, centre, plus, ok):
        curvature = minus - 2.0 * centre + plus
        ok = ok & (curvature < 0)
        delta = 0.5 * (minus - plus) / jnp.where(ok, curvature, -1.0)
        return jnp.where(ok, jnp.clip(delta, -0.5, 0.5), 0.0)

    centre = value(y, x)
    dx = shift(value(y, x - 1), centre, value(y, x + 1), (x >= 1) & (x + 1 < width))
    dy = shift(value(y - 1, x), centre, value(y + 1, x), (y >= 1) & (y + 1 < height))
    return joints.astype(jnp.float32) + jnp.stack([dx, dy], axis=-1)
