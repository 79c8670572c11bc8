"""Belief-map targets and the center map (docs/paper_notes.md sections 1 and 3), in TensorFlow.

Coordinates are (x, y) input pixels, 0-based, integer values at pixel centres. Heatmap cell g
(along x or y) covers input pixels 8g .. 8g+7 and is centred at input pixel 3.5 + 8g.
"""
import numpy as np

from cpm_jax import tf_loader
from cpm_jax.model.architecture import STRIDE

tf = tf_loader.import_tensorflow()
TARGET_SIGMA_PX = 7.0
TARGET_CUTOFF = 0.01
CENTER_SIGMA_PX = 21.0
CENTER_POOL_WINDOW = 9


def cell_centres(num_cells: int, stride: int = STRIDE) -> np.ndarray:
    """Input-pixel coordinate of each heatmap cell centre, (num_cells,) float32."""
    return (np.arange(num_cells, dtype=np.float32) * stride + (stride - 1) / 2).astype(np.float32)


def belief_targets(joints, visibility, input_size: int, sigma: float = TARGET_SIGMA_PX,
                   stride: int = STRIDE):
    """Ideal belief maps for one person, or several summed.

    Args:
      joints: (..., P, 2) float, (x, y) in input pixels; leading dims are people (summed).
      visibility: (..., P) int, COCO convention; 0 = not labelled, gets no peak.
      input_size: side of the square input crop in pixels (a multiple of `stride`).
    Returns:
      (input_size/stride, input_size/stride, P+1) float32: a Gaussian peak (1 at the joint,
      values under 0.01 cut to 0) per part, overlapping peaks summed and clipped at 1, and a
      background map max(0, 1 - max over parts) last.
    """
    joints = tf.convert_to_tensor(joints, tf.float32)
    labelled = tf.cast(tf.convert_to_tensor(visibility) > 0, tf.float32)
    centres = tf.constant(cell_centres(input_size // stride, stride))
    dx2 = tf.square(centres - joints[..., 0:1])                # (..., P, W)
    dy2 = tf.square(centres - joints[..., 1:2])                # (..., P, H)
    d2 = dy2[..., :, None] + dx2[..., None, :]                 # (..., P, H, W)
    peaks = tf.exp(-d2 / (2.0 * sigma * sigma))
    # tf.where, not a product: an unlabelled joint may carry NaN coordinates (NaN x 0 = NaN).
    peaks = tf.where((peaks >= TARGET_CUTOFF) & (labelled[..., None, None] > 0), peaks, 0.0)
    peaks = tf.reshape(peaks, [-1] + peaks.shape[-3:].as_list())
    parts = tf.minimum(tf.reduce_sum(peaks, axis=0), 1.0)     # (P, H, W)
    parts = tf.transpose(parts, [1, 2, 0])                     # (H, W, P)
    background = tf.maximum(0.0, 1.0 - tf.reduce_max(parts, axis=-1, keepdims=True))
    return tf.concat([parts, background], axis=-1)


def center_map(input_size: int, center=None, sigma: float = CENTER_SIGMA_PX,
               stride: int = STRIDE) -> np.ndarray:
    """The pooled center map, (input_size/stride, input_size/stride, 1) float32.

    A Gaussian (sigma in input pixels) at `center` (x, y), the crop centre by default, average
    pooled with a 9x9 window at the given stride; windows hanging over the bottom/right edge
    average only the pixels inside (Caffe's ceil-mode pooling).
    """
    if center is None:
        center = ((input_size - 1) / 2, (input_size - 1) / 2)
    cx, cy = center
    pix = np.arange(input_size, dtype=np.float64)
    gx = np.exp(-(pix - cx) ** 2 / (2 * sigma ** 2))
    gy = np.exp(-(pix - cy) ** 2 / (2 * sigma ** 2))
    cells = input_size // stride
    starts = np.arange(cells) * stride
    # The Gaussian is separable, and so is the average over a window.
    pool = np.zeros((cells, input_size))
    for g, s in enumerate(starts):
        e = min(s + CENTER_POOL_WINDOW, input_size)
        pool[g, s:e] = 1.0 / (e - s)
    return np.outer(pool @ gy, pool @ gx)[..., None].astype(np.float32)
