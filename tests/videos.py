"""Videos for the video tests, written with PyAV: one synthetic figure (data_pipelines/synthetic.py's
own drawing: the style and size the shipped `synthetic` model was trained on) walking across a
still, cluttered background while it turns in-plane and moves its limbs, with the true joints
of every frame; and the broken files a user may bring (truncated, no frames).

Frames are made one at a time (`walking_frames` is a generator), so a long clip costs no more
memory to write than a short one. Pixels: (x, y), 0-based, integers at pixel centres.
"""
from fractions import Fraction
from typing import Iterable, Iterator

import av
import numpy as np
from PIL import Image, ImageDraw

from data_pipelines import synthetic


def _path(n: int, width: int, height: int, figure_height: float, max_turn: float, rng) -> np.ndarray:
    """(n, 14, 2) joints px: two random upright poses blended back and forth (limbs moving),
    turned in-plane by up to `max_turn` degrees, the joints' box middle walking from the left
    to the right of the frame."""
    a, b = synthetic._sample_pose(rng), synthetic._sample_pose(rng)
    t = np.arange(n) / max(n - 1, 1)
    joints = np.empty((n, synthetic.NUM_JOINTS, 2))
    for i, ti in enumerate(t):
        pose = a + (b - a) * (0.5 - 0.5 * np.cos(2 * np.pi * 2 * ti))
        points = pose @ synthetic._rotation(np.deg2rad(max_turn * np.sin(2 * np.pi * ti))).T * figure_height
        joints[i] = points - 0.5 * (points.min(0) + points.max(0))
    half = 0.5 * np.ptp(joints, axis=1).max(0)                 # (2,) the widest half-extent seen
    margin = 4 + half
    if np.any(2 * margin >= (width, height)):
        raise ValueError(f"a {figure_height:g} px figure does not fit a {width}x{height} frame")
    centre = np.stack([margin[0] + t * (width - 1 - 2 * margin[0]),
                       np.full(n, (height - 1) / 2) + 0.1 * half[1] * np.sin(2 * np.pi * 3 * t)], axis=1)
    return joints + centre[:, None]


def walking_frames(n: int = 40, width: int = 256, height: int = 192, figure_height: float = 110,
                   seed: int = 0, max_turn: float = 35.0) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """(true joints (n, 14, 2) px, a generator of the n frames uint8 (height, width, 3)). The
    figure's scale (synthetic.py: its height H) is `figure_height` px in every frame."""
    rng = np.random.default_rng(seed)
    joints = _path(n, width, height, figure_height, max_turn, rng)
    side = max(width, height)
    mean = rng.uniform(30.0, 225.0, size=3)
    candidates = rng.uniform(0.0, 255.0, size=(8, 3))
    colour = candidates[np.argmax(np.linalg.norm(candidates - mean, axis=1))]
    torso = 0.55 * colour + 0.45 * mean + rng.uniform(-15.0, 15.0, size=3)
    background = synthetic._background(rng, side, mean)
    draw = ImageDraw.Draw(background)
    synthetic._draw_clutter(draw, rng, side, mean)
    # Decoys anywhere the figure never passes: they avoid every frame's joints.
    synthetic._draw_decoys(draw, rng, side, figure_height, joints.reshape(-1, 2), colour)
    background = background.crop((0, 0, width, height))
    limb = synthetic._limb_width(rng, figure_height)

    def frames() -> Iterator[np.ndarray]:
        for k in range(n):
            image = background.copy()
            synthetic._draw_figure(ImageDraw.Draw(image), joints[k], limb, colour, torso)
            noise = rng.standard_normal((height, width, 3), dtype=np.float32) * synthetic._NOISE_SIGMA
            yield np.clip(np.rint(np.asarray(image, np.float32) + noise), 0, 255).astype(np.uint8)
    return joints, frames()


def write(path, frames: Iterable[np.ndarray], fps: int = 25, codec: str = "libx264",
          faststart: bool = False, rotation: int = 0) -> int:
    """Encodes RGB frames (H, W, 3) uint8 (even H, W) into `path` (container by its extension;
    `faststart`: an MP4's index at the start, as streaming sites write them; `rotation`: a display
    rotation, degrees counter-clockwise, as phones store portrait clips). Frame count."""
    container = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    stream = container.add_stream(codec, rate=Fraction(fps))
    stream.pix_fmt = "yuv420p"
    if rotation:
        stream.set_display_rotation(rotation)
    count = 0
    for frame in frames:
        if count == 0:
            stream.height, stream.width = frame.shape[:2]
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
        count += 1
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return count


def walking_video(path, n: int = 40, width: int = 256, height: int = 192, figure_height: float = 110,
                  seed: int = 0, fps: int = 25, faststart: bool = False) -> np.ndarray:
    """Writes `walking_frames` to `path`; returns the true joints (n, 14, 2) px."""
    joints, frames = walking_frames(n, width, height, figure_height, seed)
    write(path, frames, fps, faststart=faststart)
    return joints


def truncated(source, path, fraction: float) -> None:
    """`path`: the first `fraction` of the bytes of `source` (a download cut short)."""
    data = open(source, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * fraction)])


def no_frames(path, width: int = 64, height: int = 48) -> None:
    """An AVI with a video stream and no frames (an MP4 muxer drops a track without samples)."""
    container = av.open(str(path), "w", format="avi")
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    container.start_encoding()
    container.close()


def resized_frames(frames: Iterable[np.ndarray], width: int, height: int) -> Iterator[np.ndarray]:
    """`frames` resized to width x height (bicubic)."""
    for frame in frames:
        yield np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))
