"""Video in and out with PyAV (FFmpeg): `probe` a file (one-line errors naming it), `Reader`
streams its decoded frames, `Writer` encodes frames into an MP4, `draw_pose` draws a skeleton
on a frame with PIL. Frames are RGB uint8 (H, W, 3) in the video's pixels as a player shows
them: a phone's portrait clip, stored as landscape frames with a display rotation, comes out
upright (the rotation applied in quarter turns). One frame is held at a time, so memory does not
grow with the video's length.

Decoding: a packet that does not decode (a damaged or truncated file) is skipped and counted;
`Reader.problem()` then says where, as does a file that ends before the frame count its
container lists. Times are seconds from the stream's start (the frame's presentation time).
The MP4 is H.264 (libx264; MPEG-4 part 2 where FFmpeg lacks it), 4:2:0 for even frame sizes
and 4:4:4 for odd ones (4:2:0 needs even sides), at the given frame rate.
"""
import contextlib
import dataclasses
import os
from fractions import Fraction
from typing import Iterator

import av
import numpy as np
from PIL import Image, ImageDraw

from cpm_jax import errors
from data_pipelines import skeleton

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
_DECODE_ERRORS = (av.error.FFmpegError, ValueError)


def is_video(path: str) -> bool:
    """Whether `path` names a video by its extension (VIDEO_EXTENSIONS, any case)."""
    return os.path.splitext(str(path))[1].lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says: frame size px (as displayed), rate (frames/s), frame count (None: not listed)."""
    path: str
    width: int
    height: int
    fps: Fraction
    frames: int | None
    codec: str


def _open(path: str):
    if not os.path.exists(path):
        raise errors.InputError(f"{path}: no such video file")
    if not os.path.isfile(path):
        raise errors.InputError(f"{path}: is a directory, not a video file")
    try:
        container = av.open(path)
    except _DECODE_ERRORS as error:
        raise errors.InputError(f"{path}: not a video FFmpeg can read ({_reason(error)}): a damaged, "
                                "truncated or unsupported file") from error
    if not container.streams.video:
        container.close()
        raise errors.InputError(f"{path}: holds no video stream")
    return container


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error).split(":")[0] or type(error).__name__


def probe(path: str) -> VideoInfo:
    """The video's `VideoInfo`, having decoded its first frame: InputError naming the file when it
    is missing, not a video FFmpeg reads, without a video stream, or without a frame."""
    path = str(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        first = next(iter(Reader(path, container=container)), None)
        if first is None:
            raise errors.InputError(f"{path}: the video has no frames that decode")
        height, width = first[2].shape[:2]
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        return VideoInfo(path, width, height, Fraction(fps), int(stream.frames) or None, stream.codec_context.name)
    finally:
        container.close()


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """The frame's RGB (H, W, 3) as displayed: turned by its display matrix's counter-clockwise
    angle, rounded to quarter turns (phones record in 90-degree steps); unrotated frames as stored."""
    rgb = frame.to_ndarray(format="rgb24")
    quarters = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarters)) if quarters else rgb


class Reader:
    """Iterates over (index, time s, RGB uint8 (H, W, 3)) of every `every`-th decoded frame
    (indices 0, every, 2 every, ...), at most `max_frames` of them (None: all)."""

    def __init__(self, path: str, every: int = 1, max_frames: int | None = None, container=None):
        self.path, self.every, self.max_frames, self._container = str(path), int(every), max_frames, container
        self.decoded, self.listed = 0, None
        self.failures, self.first_failure = 0, None        # undecodable packets: count, (frame, reason)
        self.complete = False                              # read to the end (not stopped by max_frames)

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        container = self._container or _open(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            self.listed = int(stream.frames) or None
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            given = 0
            for frame in self._decoded(container, stream):
                index = self.decoded
                self.decoded += 1
                if index % self.every:
                    continue
                time = frame.time - start if frame.time is not None else index / rate
                yield index, round(max(time, 0.0), 6), _upright(frame)
                given += 1
                if self.max_frames is not None and given >= self.max_frames:
                    return
            self.complete = True
        finally:
            if self._container is None:
                container.close()

    def _decoded(self, container, stream):
        """The stream's frames, past packets that fail to decode (counted) until the demuxer ends."""
        try:
            for packet in container.demux(stream):
                try:
                    yield from packet.decode()
                except _DECODE_ERRORS as error:
                    self.failures += 1
                    self.first_failure = self.first_failure or (self.decoded, _reason(error))
        except _DECODE_ERRORS as error:                     # the demuxer itself gave up
            self.failures += 1
            self.first_failure = self.first_failure or (self.decoded, _reason(error))

    def problem(self) -> str | None:
        """After a complete read: where decoding failed or the file ended early, in words; None if
        every frame the container lists decoded."""
        if not self.complete:
            return None
        listed = f" (the container lists {self.listed})" if self.listed else ""
        if self.failures and self.first_failure[0] >= self.decoded:
            return f"decoding stopped at frame {self.decoded}{listed}: {self.first_failure[1]}"
        if self.failures:
            return (f"{self.failures} undecodable packet(s) skipped, the first at frame "
                    f"{self.first_failure[0]}: {self.first_failure[1]}")
        if self.listed and self.decoded < self.listed:
            return f"decoding stopped at frame {self.decoded}{listed}: the file ends early (truncated?)"
        return None


class Writer:
    """An MP4 at `path` (any name: the format is given) of width x height frames at `fps`;
    `write(rgb)` one frame (H, W, 3) uint8, `close()` flushes the encoder and the file."""

    def __init__(self, path: str, width: int, height: int, fps: Fraction):
        self.path, self.count = path, 0
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self._container = av.open(path, "w", format="mp4")
        x264 = "libx264" in av.codecs_available
        self._stream = self._container.add_stream("libx264" if x264 else "mpeg4", rate=self.fps,
                                                  options={"preset": "veryfast"} if x264 else {})
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p" if (width % 2 == 0 and height % 2 == 0) or not x264 else "yuv444p"

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, np.uint8), format="rgb24")
        frame.pts, frame.time_base = self.count, 1 / self.fps
        with self._as_os_error():
            self._container.mux(self._stream.encode(frame))
        self.count += 1

    def close(self) -> None:
        if self._container is not None:
            with self._as_os_error():
                try:
                    self._container.mux(self._stream.encode())
                finally:
                    self._container.close()
                    self._container = None

    @contextlib.contextmanager
    def _as_os_error(self):
        """FFmpeg's write errors (a full disk) as the OSError they are, naming the file."""
        try:
            yield
        except av.error.FFmpegError as error:
            if isinstance(error, OSError):
                raise
            raise OSError(error.errno, error.strerror or str(error), self.path) from error

    def abandon(self) -> None:
        """Closes without caring whether the file is complete (it is about to be removed)."""
        try:
            self.close()
        except (av.error.FFmpegError, OSError, ValueError):
            pass


def _side(a: str, b: str) -> str:
    from cpm_jax import visualize
    names = a + b
    return (visualize.RIGHT if "r_" in names and "l_" not in names
            else visualize.LEFT if "l_" in names and "r_" not in names else visualize.CENTRE)


def draw_pose(rgb: np.ndarray, joints: np.ndarray, order: skeleton.Skeleton, label: str = "",
              faded: bool = False) -> np.ndarray:
    """`rgb` (H, W, 3) uint8 with the skeleton of `joints` (P, 2) px drawn on it (right limbs
    red, left blue, as in the photos' pictures; `faded`: thin and grey, for a lost person) and
    `label` in the top-left corner."""
    image = Image.fromarray(np.asarray(rgb, np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 120))
    points = [tuple(map(float, p)) for p in np.asarray(joints)]
    for (i, j), (a, b) in zip(order.limb_indices, order.limbs):
        draw.line([points[i], points[j]], fill="#9a9a9a" if faded else _side(a, b),
                  width=max(1, width // 2) if faded else width)
    r = width * 0.8
    for x, y in points:
        draw.ellipse([x - r, y - r, x + r, y + r], fill="white", outline="black")
    if label:
        box = draw.textbbox((4, 4), label)
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill="black")
        draw.text((4, 4), label, fill="#ff6060" if faded else "white")
    return np.asarray(image)
