"""Procedural, deterministic dataset of articulated 14-joint stick figures.

Each example is an ``image_size`` x ``image_size`` RGB image of one front-facing human-like
figure (filled torso quad, thick round-capped limbs, elliptical head) over a cluttered background,
with its 14 joints, built so that *local evidence alone is ambiguous*:

* left and right limbs are drawn identically (same colour and thickness), and arms may cross the
  torso, so a wrist or elbow patch does not say which side it belongs to;
* every limb joint (shoulders, elbows, wrists, hips, knees, ankles) carries the same contrasting
  knob, so a joint is easy to *find* but its identity is not written on it;
* the background holds limb-like *decoys* (two connected thick segments, often in the figure's
  own colour and then with the same knobs) attached to no body, plus rectangles, ellipses and
  stripes in muted background tones over a smooth colour field.

A stage-1 CPM, which only sees image patches, therefore confuses sides and fires on decoys; later
stages, which also see the other joints' belief maps (spatial context: a wrist hangs off an elbow,
which hangs off a shoulder next to the neck and head), can resolve both. The figures are large,
thick and contrasting, so a tiny convnet learns the task in minutes on a CPU.

Conventions: pixel coordinates are ``(x, y)``, 0-based, integers at pixel centres. The person
faces the camera: in the figure's upright frame its RIGHT limbs are on the IMAGE LEFT of the
torso. The person centre is the midpoint of the joints' bounding box; the person scale is the
figure height ``H`` (head top to ankles when standing straight), in pixels. Joint order (LSP's,
0-based): 0 r ankle, 1 r knee, 2 r hip, 3 l hip, 4 l knee, 5 l ankle, 6 r wrist, 7 r elbow,
8 r shoulder, 9 l shoulder, 10 l elbow, 11 l wrist, 12 neck, 13 head top.
"""

from __future__ import annotations

import operator

import numpy as np
from PIL import Image, ImageDraw

NUM_JOINTS = 14
SPLITS = ("train", "heldout")

R_ANKLE, R_KNEE, R_HIP, L_HIP, L_KNEE, L_ANKLE = range(6)
R_WRIST, R_ELBOW, R_SHOULDER, L_SHOULDER, L_ELBOW, L_WRIST = range(6, 12)
NECK, HEAD_TOP = 12, 13

# (root, middle, end) joint chains; the first of each pair is the right side.
_LEGS = ((R_HIP, R_KNEE, R_ANKLE), (L_HIP, L_KNEE, L_ANKLE))
_ARMS = ((R_SHOULDER, R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW, L_WRIST))
_TORSO = (R_SHOULDER, L_SHOULDER, L_HIP, R_HIP)

# Body proportions as fractions of the person height H: torso length, hip
# width, shoulder width, upper arm, forearm, thigh, shin, head (neck to top).
_PROPORTIONS = np.array([0.30, 0.18, 0.25, 0.17, 0.15, 0.24, 0.23, 0.13])

_MIN_IMAGE_SIZE = 32
_NOISE_SIGMA = 5.0  # grey levels
_UNIT_CIRCLE = np.stack(
    [np.cos(np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)),
     np.sin(np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False))], axis=1)


def _direction(angle: float) -> np.ndarray:
    """Unit (x, y) vector for `angle` radians: 0 points down (+y), pi/2 image-left."""
    return np.array([-np.sin(angle), np.cos(angle)])


def _rotation(angle: float) -> np.ndarray:
    """(2, 2) matrix rotating (x, y) column vectors by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _sample_pose(rng: np.random.Generator) -> np.ndarray:
    """Random upright pose: (14, 2) joints in units of H, mid-hip at origin, y down.

    Side sign ``s`` is +1 for the right limbs (image left) and -1 for the left;
    limb angles are measured from "straight down", positive = away from the body.
    """
    torso, hip_w, shoulder_w, upper_arm, forearm, thigh, shin, head = (
        _PROPORTIONS * rng.uniform(0.9, 1.1, size=_PROPORTIONS.size))
    lean = np.deg2rad(rng.uniform(-20.0, 20.0))
    down = _direction(lean)  # torso axis, from neck towards the hips
    image_left = _direction(lean + np.pi / 2)

    joints = np.zeros((NUM_JOINTS, 2))
    joints[NECK] = -torso * down
    joints[HEAD_TOP] = joints[NECK] - head * _direction(
        lean + np.deg2rad(rng.uniform(-15.0, 15.0)))
    for s, (shoulder, elbow, wrist) in zip((1, -1), _ARMS):
        joints[shoulder] = joints[NECK] + s * 0.5 * shoulder_w * image_left + 0.03 * down
        upper_dir = lean + s * np.deg2rad(rng.uniform(-40.0, 180.0))
        bend = np.deg2rad(rng.uniform(0.0, 150.0)) * rng.choice((-1.0, 1.0))
        foreshorten = rng.uniform(0.9, 1.0, size=2)
        joints[elbow] = joints[shoulder] + upper_arm * foreshorten[0] * _direction(upper_dir)
        joints[wrist] = joints[elbow] + forearm * foreshorten[1] * _direction(upper_dir + bend)
    for s, (hip, knee, ankle) in zip((1, -1), _LEGS):
        joints[hip] = (-s * 0.5 * hip_w, 0.0)
        thigh_dir = s * np.deg2rad(rng.uniform(-30.0, 60.0))
        bend = np.deg2rad(120.0 * rng.uniform() ** 1.5) * rng.choice((-1.0, 1.0))
        foreshorten = rng.uniform(0.9, 1.0, size=2)
        joints[knee] = joints[hip] + thigh * foreshorten[0] * _direction(thigh_dir)
        joints[ankle] = joints[knee] + shin * foreshorten[1] * _direction(thigh_dir + bend)
    return joints


def _place(rng: np.random.Generator, pose: np.ndarray, height: float,
           image_size: int, margin: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotate, scale and translate an upright `pose` (units of H) into the image.

    Shrinks the figure if its joints would not fit with `margin` pixels to
    spare. Returns (joints (14, 2) px, final height H px, centre (2,) px).
    """
    points = pose @ _rotation(np.deg2rad(rng.uniform(-45.0, 45.0))).T * height
    low, high = points.min(axis=0), points.max(axis=0)
    room = image_size - 1 - 2 * margin
    shrink = min(1.0, room / max(high - low))
    points, low, high = points * shrink, low * shrink, high * shrink
    half_extent = 0.5 * (high - low)
    centre = rng.uniform(margin + half_extent, image_size - 1 - margin - half_extent)
    return points - 0.5 * (low + high) + centre, height * shrink, centre


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float RGB uniform in [0, 255]."""
    return rng.uniform(0.0, 255.0, size=3)


def _as_fill(colour: np.ndarray) -> tuple[int, int, int]:
    """PIL fill tuple from a (3,) float colour, clipped to [0, 255]."""
    return tuple(int(c) for c in np.clip(colour, 0, 255))


def _background(rng: np.random.Generator, size: int, mean: np.ndarray) -> Image.Image:
    """Smooth random colour field (gradient + low-frequency noise) around `mean`."""
    grid = np.linspace(-1.0, 1.0, 5)
    gradient = rng.uniform(-40.0, 40.0, size=(2, 3))
    coarse = (mean + grid[None, :, None] * gradient[0] + grid[:, None, None] * gradient[1]
              + rng.uniform(-35.0, 35.0, size=(5, 5, 3)))
    small = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    return small.resize((size, size), Image.Resampling.BILINEAR)


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int,
                  mean: np.ndarray) -> None:
    """Random rectangles, ellipses and stripe groups in background-like tones (texture, not
    figure-like evidence: the figure and the decoys are what stand out)."""
    for _ in range(rng.integers(6, 13)):
        kind = rng.integers(3)
        fill = _as_fill(mean + rng.uniform(-45.0, 45.0, size=3))
        if kind == 2:
            angle = rng.uniform(0.0, np.pi)
            normal = np.array([np.cos(angle), np.sin(angle)])
            along = np.array([-normal[1], normal[0]]) * size * 1.5
            start, spacing = rng.uniform(0.0, size, size=2), rng.uniform(4.0, 10.0)
            width = int(rng.integers(1, 4))
            for k in range(rng.integers(3, 7)):
                mid = start + k * spacing * normal
                draw.line([tuple(mid - along), tuple(mid + along)], fill=fill, width=width)
        else:
            corner = rng.uniform(-0.1 * size, size, size=2)
            box = [*corner, *(corner + rng.uniform(0.08, 0.4, size=2) * size)]
            (draw.rectangle if kind == 0 else draw.ellipse)(box, fill=fill)


def _limb_width(rng: np.random.Generator, height: float) -> int:
    """Odd line width in px, about 0.05-0.07 x `height` (odd keeps lines centred)."""
    return 2 * int(rng.uniform(0.025, 0.035) * height) + 1


def _draw_chain(draw: ImageDraw.ImageDraw, points: np.ndarray, width: int,
                fill: tuple[int, int, int]) -> None:
    """Thick polyline through `points` (K, 2) px with round caps and joints.

    PIL rounds line vertices to pixel centres; the caps are rounded the same way.
    """
    vertices = [(int(x), int(y)) for x, y in np.rint(points)]
    draw.line(vertices, fill=fill, width=width)
    r = width // 2
    for x, y in vertices:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _knob_colour(colour: np.ndarray) -> np.ndarray:
    """Near-white or near-black, whichever contrasts more with `colour` in luminance."""
    luminance = float(np.dot(colour, [0.299, 0.587, 0.114]))
    return np.full(3, 20.0 if luminance > 128.0 else 235.0)


def _draw_knobs(draw: ImageDraw.ImageDraw, points: np.ndarray, width: int,
                fill: tuple[int, int, int]) -> None:
    """Discs of diameter ~0.8 x limb `width` at `points` (K, 2): "a joint is here", not which."""
    r = max(1, int(0.4 * width))
    for x, y in np.rint(points):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _draw_decoys(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int,
                 height: float, joints: np.ndarray, figure_colour: np.ndarray) -> None:
    """2-5 limb-like two-segment chains kept away from the figure's joints; those in the
    figure's colour carry the figure's joint knobs, so they look like loose arms or legs."""
    for _ in range(rng.integers(2, 6)):
        width = _limb_width(rng, height)
        like_figure = rng.uniform() < 0.6
        fill = _as_fill(figure_colour if like_figure else _random_colour(rng))
        for _attempt in range(4):
            lengths = rng.uniform(0.15, 0.24, size=2) * height
            angle = rng.uniform(0.0, 2.0 * np.pi)
            bend = np.deg2rad(rng.uniform(-150.0, 150.0))
            start = rng.uniform(0.0, size - 1, size=2)
            middle = start + lengths[0] * _direction(angle)
            end = middle + lengths[1] * _direction(angle + bend)
            chain = np.stack([start, middle, end])
            probes = np.concatenate([chain, 0.5 * (chain[1:] + chain[:-1])])
            gaps = np.linalg.norm(probes[:, None] - joints[None], axis=-1)
            if gaps.min() > 0.12 * height:
                _draw_chain(draw, chain, width, fill)
                if like_figure:
                    _draw_knobs(draw, chain, width, _as_fill(_knob_colour(figure_colour)))
                break


def _draw_figure(draw: ImageDraw.ImageDraw, joints: np.ndarray, width: int,
                 colour: np.ndarray, torso_colour: np.ndarray) -> None:
    """Legs, torso, neck and head, then arms (front-most), in the figure colours."""
    fill = _as_fill(colour)
    for chain in _LEGS:
        _draw_chain(draw, joints[list(chain)], width, fill)
    draw.polygon([tuple(joints[j]) for j in _TORSO], fill=_as_fill(torso_colour))
    head_axis = joints[NECK] - joints[HEAD_TOP]
    head_len = np.linalg.norm(head_axis)
    along, across = head_axis / head_len, np.array([-head_axis[1], head_axis[0]]) / head_len
    head_centre = joints[HEAD_TOP] + 0.45 * head_len * along
    outline = (head_centre + 0.45 * head_len * _UNIT_CIRCLE[:, :1] * along
               + 0.34 * head_len * _UNIT_CIRCLE[:, 1:] * across)
    _draw_chain(draw, np.stack([joints[NECK], head_centre]), width, fill)
    draw.polygon([tuple(p) for p in outline], fill=fill)
    for chain in _ARMS:
        _draw_chain(draw, joints[list(chain)], width, fill)
    _draw_knobs(draw, joints[:NECK], width, _as_fill(_knob_colour(colour)))


def render_example(seed: int, split: str, index: int, image_size: int = 160) -> dict:
    """Renders example `index` of `split`; deterministic in all four arguments.

    Returns a dict with
      'image': uint8 (image_size, image_size, 3) RGB,
      'joints': float32 (14, 2) joint (x, y) in pixels (integers = pixel centres),
      'visibility': int32 (14,) COCO convention; always 2 (labelled, visible):
        legs never reach behind the torso, and arms are drawn in front of it,
      'center': float32 (2,) person centre (x, y) in pixels: the midpoint of
        the joints' bounding box,
      'scale': float32 () person height H in pixels.
    Every joint lies inside the image with a margin of at least 3 px.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    index = operator.index(index)
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {_MIN_IMAGE_SIZE}, got {image_size}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])

    height = rng.uniform(0.45, 0.8) * image_size
    pose = _sample_pose(rng)
    joints, height, centre = _place(rng, pose, height, image_size, 3.0 + 0.035 * height)
    width = _limb_width(rng, height)

    background_mean = rng.uniform(30.0, 225.0, size=3)
    candidates = rng.uniform(0.0, 255.0, size=(8, 3))
    colour = candidates[np.argmax(np.linalg.norm(candidates - background_mean, axis=1))]
    # The torso is a clearly different shade, so arms crossing it stay visible.
    torso_colour = 0.55 * colour + 0.45 * background_mean + rng.uniform(-15.0, 15.0, size=3)

    image = _background(rng, image_size, background_mean)
    draw = ImageDraw.Draw(image)
    _draw_clutter(draw, rng, image_size, background_mean)
    _draw_decoys(draw, rng, image_size, height, joints, colour)
    _draw_figure(draw, joints, width, colour, torso_colour)

    pixels = rng.standard_normal((image_size, image_size, 3), dtype=np.float32)
    pixels *= _NOISE_SIGMA
    pixels += np.asarray(image)
    np.clip(pixels, 0.0, 255.0, out=pixels)
    return {
        "image": np.rint(pixels, out=pixels).astype(np.uint8),
        "joints": joints.astype(np.float32),
        "visibility": np.full(NUM_JOINTS, 2, dtype=np.int32),
        "center": centre.astype(np.float32),
        "scale": np.float32(height),
    }
