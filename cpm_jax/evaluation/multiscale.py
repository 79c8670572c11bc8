"""The release's multi-scale test-time procedure (the paper, section 4.2; docs/paper_notes.md
section 5), batched and jitted (batches, shapes, device calls: `MultiScalePredictor`).

For one person, given a centre c (x, y) and a base zoom f0 (the image's scaling at multiplier 1),
for every multiplier m in `scales` (0.7, 0.8, ..., 1.3 by default):
  1. zoom f = f0 x m; crop/pad the S x S window (S = config.model.input_size) centred on c in one
     bicubic warp, grey 128 fill: training's code (`augment.bicubic_warp`) and geometry
     (`augment.crop_example`, no rotation or flip);
  2. run the network with the centred center map (as in training); keep the chosen stages (the
     last by default) and the P part maps (not the background) of the S/8 grid;
  3. resample them bicubically into the original image's pixels: the release's "upsample x8, undo
     the padding, resize to the original size" as ONE resampling per axis, cells straight to
     original pixels (the release interpolated twice; Keys cubic, edges replicated as OpenCV /
     MATLAB resize); original pixels outside the crop get 0 (the release's zero padding);
then average over the scales (the release summed: same arg-max); each part's prediction is its
arg-max pixel, with its value (the mean belief). Off by default (paper parity): flip testing (the
mirrored crop's maps mirrored back, left/right parts swapped, averaged on the cell grid) and
sub-pixel refinement (a parabola through the arg-max and its neighbours, along x and y).

Frames (x, y order; 0-based pixels, integers at pixel centres): original px, the image as loaded
(records' joints, the predictions); crop px q of the S x S input <-> original px
p = c + (q - (S - 1) / 2) / f (`crop_affine`, = augment's crop_to_image); cells of the S/8 grid,
cell g centred on crop px 8 g + 3.5, i.e. original px c + (8 g + 3.5 - (S - 1) / 2) / f; in
continuous coordinates (pixel i spans [i, i + 1]) u_orig = (8 / f) u_cell + c + 0.5 - S / (2 f)
(`cell_geometry`: scale 8 / f, translation c + 0.5 - S / (2 f)).

Where to look (`person_*`): image (LSP, the release's rule; a user's photo): c = image centre,
f0 = 0.8 x S / image height; annotated: the record's centre and scale (MPII: objpos and 1.171 /
annotated scale = data.person_height x S / record scale, records' scale being 200 x MPII's;
FLIC: the torso box as the FLIC reader turns it into centre and scale).
"""
import collections
import concurrent.futures
import dataclasses
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cpm_jax import errors
from cpm_jax.evaluation import decoding
from cpm_jax.model import architecture
from data_pipelines import augment, registry, targets

PAPER_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
LSP_HEIGHT_FRACTION = 0.8          # the release's LSP rule: person = 0.8 x input size / image height
MIN_IMAGE_SIDE = 16                # px: a smaller image cannot hold a person the network can see


@dataclasses.dataclass(frozen=True)
class Options:
    """How to test. `stages`: 1-based stage numbers, None for the last; `batch_size`: examples
    per device call (each brings K crops, 2K with flip); `canvas_multiple`: canvas bucket, px."""
    scales: tuple[float, ...] = PAPER_SCALES
    stages: tuple[int, ...] | None = None
    flip: bool = False
    subpixel: bool = False
    batch_size: int = 4
    canvas_multiple: int = 64


@dataclasses.dataclass(frozen=True)
class Person:
    """Where to look in an image: centre (x, y) in original px, and the base zoom f0."""
    center: tuple[float, float]
    base_factor: float


@dataclasses.dataclass
class Prepared:
    """One example ready for the device: crops (K, S, S, 3) uint8, geometry (K, 2, 2) float32
    cells -> original px ([scale (x, y), translation (x, y)]), size (H, W) of the original."""
    crops: np.ndarray
    geometry: np.ndarray
    size: tuple[int, int]


# -------------------------------------------------------------------------------------- parsing

def define_flags() -> None:
    """The test-time options as absl flags (--scales, --flip, --subpixel), for the CLIs."""
    from absl import flags
    flags.DEFINE_string("scales", ",".join(f"{s:g}" for s in PAPER_SCALES),
                        "Scale multipliers of the base person size.")
    flags.DEFINE_bool("flip", False, "Flip testing: average with the mirrored image's maps (left/right swapped).")
    flags.DEFINE_bool("subpixel", False, "Sub-pixel refinement of every arg-max (a parabola along x and y).")


def parse_scales(text: str) -> tuple[float, ...]:
    """'0.7,0.8,1' -> (0.7, 0.8, 1.0); every multiplier must be > 0."""
    try:
        scales = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError as error:
        raise errors.InputError(f"scales {text!r}: expected comma-separated numbers such as 0.7,1,1.3") from error
    if not scales or any(not np.isfinite(s) or s <= 0 for s in scales):
        raise errors.InputError(f"scales {text!r}: expected one or more multipliers > 0")
    return scales


def parse_stages(text: str, num_stages: int) -> tuple[int, ...]:
    """'all' -> (1..T), 'last' -> (T,), '1,3' -> (1, 3) (1-based, each in 1..T)."""
    text = str(text).strip().lower()
    if text == "all":
        return tuple(range(1, num_stages + 1))
    if text == "last":
        return (num_stages,)
    try:
        stages = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as error:
        raise errors.InputError(f"stages {text!r}: expected all, last or stage numbers such as 1,3") from error
    bad = [s for s in stages if not 1 <= s <= num_stages]
    if not stages or bad:
        raise errors.InputError(f"stages {text!r}: the model has stages 1..{num_stages}")
    return stages


# ------------------------------------------------------------------------------------- geometry

def person_from_image(height: int, width: int, input_size: int) -> Person:
    """The release's LSP rule (and a photo's default): centre = image centre, f0 = 0.8 S / H."""
    return Person(((width - 1) / 2.0, (height - 1) / 2.0), LSP_HEIGHT_FRACTION * input_size / height)


def person_from_scale(center, scale_px: float, data: ml_collections.ConfigDict, input_size: int) -> Person:
    """A known centre and person scale in px (records' `scale`: 200 x MPII's scale, about the
    person's height): f0 = data.person_height x S / scale, training's canonical zoom."""
    if not np.isfinite(scale_px) or scale_px <= 0:
        raise errors.InputError(f"person scale {scale_px}: must be a positive number of pixels")
    return Person((float(center[0]), float(center[1])), float(augment.canonical_factor(
        {"scale": float(scale_px)}, data, input_size)))


def place_person(image_shape, data: ml_collections.ConfigDict, input_size: int, center=None,
                 scale_px: float | None = None) -> tuple[Person, str]:
    """Where to look in an image of `image_shape` (H, W, ...), and how that was chosen in words.

    With `scale_px` (the person's size, as records' `scale`): that size, centred on `center` or
    the image centre. Without: the LSP rule's size (0.8 x input / image height), centred on
    `center` or the image centre. A centre outside the image, or an image under MIN_IMAGE_SIDE
    px, is an InputError: its prediction could not be right."""
    height, width = int(image_shape[0]), int(image_shape[1])
    if min(height, width) < MIN_IMAGE_SIDE:
        raise errors.InputError(f"a {width}x{height} image is too small: at least "
                                f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px are needed to find a person")
    if center is not None:
        cx, cy = float(center[0]), float(center[1])
        if not (np.isfinite([cx, cy]).all() and -0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
            raise errors.InputError(f"centre ({cx:g}, {cy:g}) lies outside the {width}x{height} image "
                                    f"(x in 0..{width - 1}, y in 0..{height - 1}, 0-based pixels)")
    image_rule = person_from_image(height, width, input_size)
    if scale_px is not None:
        how = f"{'the given centre' if center is not None else 'image centre'} and scale {scale_px:g} px"
        return person_from_scale(image_rule.center if center is None else center, scale_px, data,
                                 input_size), how
    if center is None:
        return image_rule, "image centre and height (the LSP rule)"
    return Person((float(center[0]), float(center[1])), image_rule.base_factor), \
        "the given centre and the image height (the LSP rule's size)"


def person_for_record(record: dict, data: ml_collections.ConfigDict, input_size: int, rule: str) -> Person:
    """`rule` "image" (the LSP rule) or "annotated" (the record's centre and scale)."""
    if rule == "image":
        return place_person(record["image"].shape, data, input_size)[0]
    if rule == "annotated":
        return place_person(record["image"].shape, data, input_size, record["center"], float(record["scale"]))[0]
    raise errors.InputError(f"person rule {rule!r}; known: {', '.join(registry.PERSON_RULES)}")


def crop_affine(center, factor: float, input_size: int) -> np.ndarray:
    """(2, 3) float64 crop px -> original px, p = c + (q - (S - 1) / 2) / f: augment.crop_example's
    `crop_to_image` with no rotation and no flip."""
    a = np.zeros((2, 3))
    a[0, 0] = a[1, 1] = 1.0 / factor
    a[:, 2] = np.asarray(center, np.float64) - (input_size - 1) / (2.0 * factor)
    return a


def cell_geometry(center, factor: float, input_size: int) -> np.ndarray:
    """(2, 2) [scale (x, y), translation (x, y)] from cells to original px in continuous
    coordinates: u_orig = (8 / f) u_cell + c + 0.5 - S / (2 f) (see the module docstring)."""
    stride = architecture.STRIDE
    c = np.asarray(center, np.float64)
    return np.stack([np.full(2, stride / factor), c + 0.5 - input_size / (2.0 * factor)]).astype(np.float32)


def prepare(image: np.ndarray, person: Person, scales: Sequence[float], input_size: int) -> Prepared:
    """The K crops of `image` (uint8 (H, W, 3)) and their cell -> original geometry."""
    image = np.ascontiguousarray(image, np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image of shape {image.shape}: expected (H, W, 3) RGB")
    crops, geometry = [], []
    for m in scales:
        factor = person.base_factor * m
        crops.append(augment.bicubic_warp(image, crop_affine(person.center, factor, input_size), input_size))
        geometry.append(cell_geometry(person.center, factor, input_size))
    return Prepared(np.stack(crops), np.stack(geometry), image.shape[:2])


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def crop_network(model, config: ml_collections.ConfigDict) -> Callable:
    """`model` (a CPM) as the predictor's `apply_fn(variables, crops uint8 (N, S, S, 3)) -> beliefs
    (N, T, S/8, S/8, P+1) float32`: pixels normalised x/256 - 0.5, the centre map of the crop's
    centre (config.data.center_sigma), eval mode. What `cpm_jax/serving` exports, batch left open."""
    size = config.model.input_size
    center = jnp.asarray(targets.center_map(size, sigma=config.data.get("center_sigma", targets.CENTER_SIGMA_PX)))

    def apply(variables, crops):
        x = architecture.normalise_image(crops.astype(jnp.float32))
        return model.apply(variables, x, jnp.broadcast_to(center, (crops.shape[0],) + center.shape), train=False)
    return apply


# ------------------------------------------------------------------------------------ predictor

class MultiScalePredictor:
    """The procedure for one network. `apply_fn(variables, crops uint8 (N, S, S, 3)) -> beliefs
    (N, T, S/8, S/8, P+1)`: `crop_network` (the JAX model, `for_model`) or an exported model's
    runtime called from the jitted function (`cpm_jax/serving`); the crops are centred on the
    person, so the network's centre map is the crop's centre.

    Batching, shapes (B examples per batch, K scales, T' chosen stages, P parts, h = w = S / 8):
      host   (threads)  decode + `prepare`: crops uint8 (B, K, S, S, 3), geometry (B, K, 2, 2)
                        float32 ([scale (x, y), translation (x, y)]), image sizes (B, 2) (H, W);
      device call 1     `_network_fn`: all B x K crops (x 2 with flip) in ONE apply of fixed shape
                        (the last batch is padded), compiled once -> part maps (B, K, T', h, w, P);
      device call 2     `_to_image_fn`: per example (lax.map over B), the K maps of every chosen
                        stage resampled into a canvas of (Hc, Wc) original pixels and averaged,
                        with the x and y resampling matrices ((K, Wc, w), (K, Hc, h)) in two
                        matmuls, then a masked arg-max over the example's own H x W -> joints
                        (B, T', P, 2) original px, peaks (B, T', P). The canvas is the batch's
                        largest image rounded up to a multiple of `canvas_multiple` px, so a
                        dataset compiles a few canvas sizes, not one per image size; memory per
                        example is T' x Hc x Wc x P floats.
    `run` prepares the next batches on the host while the device works, and fetches results one
    batch late so that the device queue never runs dry."""

    def __init__(self, apply_fn: Callable, variables: Any, input_size: int, num_stages: int,
                 num_parts: int, options: Options = Options(), flip_permutation: Sequence[int] | None = None):
        if input_size % architecture.STRIDE:
            raise ValueError(f"input size {input_size}: must be a multiple of {architecture.STRIDE}")
        stages = options.stages or (num_stages,)
        if any(not 1 <= s <= num_stages for s in stages):
            raise ValueError(f"stages {stages}: the model has stages 1..{num_stages}")
        if not options.scales or any(s <= 0 for s in options.scales):
            raise ValueError(f"scales {options.scales}: expected one or more multipliers > 0")
        if options.flip and (flip_permutation is None or len(flip_permutation) != num_parts):
            raise ValueError("flip testing needs the skeleton's flip permutation of the parts")
        if options.batch_size < 1 or options.canvas_multiple < 1:
            raise ValueError("batch_size and canvas_multiple must be >= 1")
        self.apply_fn, self.variables = apply_fn, variables
        self.input_size, self.num_stages, self.num_parts = input_size, num_stages, num_parts
        self.options = dataclasses.replace(options, stages=tuple(stages), scales=tuple(options.scales))
        self.flip_permutation = None if flip_permutation is None else np.asarray(flip_permutation)
        self._network = jax.jit(self._network_fn)
        self._to_image = jax.jit(self._to_image_fn, static_argnames=("canvas",))
        self._maps = jax.jit(self._maps_fn, static_argnames=("canvas",))

    @classmethod
    def for_model(cls, config: ml_collections.ConfigDict, variables: Any, options: Options = Options()):
        """A predictor for CPM(config.model) with `variables` ({"params": ...}) and the flip
        permutation of config.data.dataset's skeleton."""
        from cpm_jax import platform
        return cls.for_network(config, crop_network(platform.make_model(config.model), config), variables, options)

    @classmethod
    def for_network(cls, config: ml_collections.ConfigDict, apply_fn: Callable, variables: Any = None,
                    options: Options = Options()):
        """A predictor for `apply_fn` (the class docstring) with config's sizes and skeleton."""
        order = registry.get(config.data.dataset).skeleton
        return cls(apply_fn, variables, config.model.input_size, config.model.num_stages,
                   config.model.num_parts, options, order.flip_permutation)

    @property
    def stages(self) -> tuple[int, ...]:
        return self.options.stages

    # -- device functions -------------------------------------------------------------------

    def _network_fn(self, variables, crops):
        """crops (N, S, S, 3) uint8 -> chosen stages' part maps (N, T', h, w, P), flip-averaged."""
        n = crops.shape[0]
        if self.options.flip:
            crops = jnp.concatenate([crops, crops[:, :, ::-1]], axis=0)
        beliefs = self.apply_fn(variables, crops)
        parts = beliefs[:, jnp.asarray(self.stages) - 1, ..., :self.num_parts].astype(jnp.float32)
        if self.options.flip:
            # The mirrored crop's map of part perm[j], mirrored back, is part j's map (cell g <->
            # cell w-1-g exactly, since cell centres 8g+3.5 are symmetric in the crop).
            mirrored = parts[n:, :, :, ::-1][..., jnp.asarray(self.flip_permutation)]
            parts = 0.5 * (parts[:n] + mirrored)
        return parts

    def _to_image_fn(self, parts, geometry, sizes, canvas):
        """parts (B, K, T', h, w, P), geometry (B, K, 2, 2), sizes (B, 2) -> joints (B, T', P, 2)
        original px, peaks (B, T', P): arg-max of the scale-averaged maps on a `canvas` (Hc, Wc)."""
        k = parts.shape[1]

        def one(args):
            maps, geo, size = args
            mean = decoding.resample_sum(maps, geo[:, 0], geo[:, 1], canvas) / k   # (T', Hc, Wc, P)
            joints, peak = decoding.masked_argmax(mean, size[0], size[1])
            if self.options.subpixel:
                joints = jax.vmap(decoding.refine_quadratic, in_axes=(0, 0, None, None))(
                    mean, joints, size[0], size[1])
            return joints, peak

        return jax.lax.map(one, (parts, geometry, sizes))

    def _maps_fn(self, parts, geometry, canvas):
        """The scale-averaged maps themselves, (B, T', Hc, Wc, P), for pictures."""
        k = parts.shape[1]
        return jax.lax.map(lambda a: decoding.resample_sum(a[0], a[1][:, 0], a[1][:, 1], canvas) / k,
                           (parts, geometry))

    # -- host side --------------------------------------------------------------------------

    def prepare(self, image: np.ndarray, person: Person) -> Prepared:
        return prepare(image, person, self.options.scales, self.input_size)

    def _batch_parts(self, prepared: list[Prepared]):
        """Pads to `batch_size` examples and runs the network: (parts on device, geometry, sizes)."""
        b, k, s = self.options.batch_size, len(self.options.scales), self.input_size
        if not 1 <= len(prepared) <= b:
            raise ValueError(f"{len(prepared)} examples for a batch of {b}")
        padded = prepared + [prepared[0]] * (b - len(prepared))
        crops = np.stack([p.crops for p in padded]).reshape(b * k, s, s, 3)
        parts = self._network(self.variables, crops)
        parts = parts.reshape((b, k) + parts.shape[1:])
        geometry = np.stack([p.geometry for p in padded])
        sizes = np.array([p.size for p in padded], np.int32)
        return parts, geometry, sizes

    def _canvas(self, prepared: list[Prepared]) -> tuple[int, int]:
        m = self.options.canvas_multiple
        return (_round_up(max(p.size[0] for p in prepared), m), _round_up(max(p.size[1] for p in prepared), m))

    def dispatch(self, prepared: list[Prepared]):
        """Starts both device calls for up to `batch_size` examples; returns device arrays
        (joints (B, T', P, 2), peaks (B, T', P)) including the padding (async: not waited for)."""
        parts, geometry, sizes = self._batch_parts(prepared)
        return self._to_image(parts, geometry, sizes, canvas=self._canvas(prepared))

    def predict_batch(self, prepared: list[Prepared]) -> tuple[np.ndarray, np.ndarray]:
        """(joints (n, T', P, 2) original px, peaks (n, T', P)) for n <= batch_size examples."""
        joints, peak = jax.device_get(self.dispatch(prepared))
        return joints[:len(prepared)], peak[:len(prepared)]

    def predict(self, image: np.ndarray, person: Person) -> tuple[np.ndarray, np.ndarray]:
        """One image: (joints (T', P, 2) original px, peaks (T', P))."""
        joints, peak = self.predict_batch([self.prepare(image, person)])
        return joints[0], peak[0]

    def predict_with_maps(self, image: np.ndarray, person: Person, max_side: int = 384):
        """One image, one network call: (joints (T', P, 2) original px, peaks (T', P), maps
        (T', H', W', P) the scale-averaged part beliefs in the original frame scaled by `ratio` =
        min(1, max_side / max(H, W)) (H' = round(H x ratio); a pixel's centre p maps to
        (p + 0.5) x ratio - 0.5), ratio)."""
        prepared = self.prepare(image, person)
        parts, geometry, sizes = self._batch_parts([prepared])
        joints, peak = self._to_image(parts, geometry, sizes, canvas=self._canvas([prepared]))
        height, width = prepared.size
        ratio = min(1.0, max_side / max(height, width))
        shape = (max(1, round(height * ratio)), max(1, round(width * ratio)))
        maps = self._maps(parts, geometry * np.float32(ratio), canvas=shape)
        joints, peak, maps = jax.device_get((joints, peak, maps))
        return joints[0], peak[0], maps[0], ratio

    def run(self, loaders: Iterable[Callable[[], Any]], workers: int = 4,
            on_batch: Callable[[int], None] | None = None) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """The procedure over many examples, pipelined: each loader, called in a worker thread,
        returns (image uint8 (H, W, 3), Person, extra) or None (a skipped example). Yields
        (extra, joints (T', P, 2), peaks (T', P)) in the loaders' order; `on_batch(n)` after each
        batch with the number of examples finished so far."""
        b = self.options.batch_size

        def load_and_prepare(loader):
            item = loader()
            if item is None:
                return None
            image, person, extra = item
            return self.prepare(image, person), extra

        chunks = _chunks(loaders, b)
        done = 0
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            queued = collections.deque()      # futures of batches being loaded (host)
            running = None                    # (extras, device results) of the last dispatched batch

            def fill():
                while len(queued) < 2:
                    chunk = next(chunks, None)
                    if chunk is None:
                        return
                    queued.append([pool.submit(load_and_prepare, loader) for loader in chunk])

            fill()
            while queued or running is not None:
                current = None
                if queued:
                    items = [f.result() for f in queued.popleft()]
                    fill()
                    items = [item for item in items if item is not None]
                    if items:
                        current = ([extra for _, extra in items], self.dispatch([p for p, _ in items]))
                if running is not None:
                    extras, results = running
                    joints, peak = jax.device_get(results)
                    for i, extra in enumerate(extras):
                        yield extra, joints[i], peak[i]
                    done += len(extras)
                    if on_batch is not None:
                        on_batch(done)
                running = current


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
