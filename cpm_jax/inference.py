"""From belief maps to joint positions (reference section 5, single scale)."""
import jax
import jax.numpy as jnp
import numpy as np

from cpm_jax import architecture


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
