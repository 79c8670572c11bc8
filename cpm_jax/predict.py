"""The pose of one person in your photos or a video, by a trained, shipped or exported model.

    python -m cpm_jax.predict --workdir runs/lsp photo.jpg [more.jpg ...] \\
        [--center X,Y] [--scale S] [--out DIR] [--scales 0.7,0.8,...] [--flip] [--subpixel]
    python -m cpm_jax.predict --pretrained lspet_cpu photo.jpg ...    # a model shipped in pretrained/
    python -m cpm_jax.predict --model exported/model.onnx photo.jpg   # an export, in its runtime
    python -m cpm_jax.predict --pretrained lspet_cpu clip.mp4 [--every N] [--max_frames M]

Photos: the release's multi-scale test (evaluation/multiscale.py; docs/paper_notes.md section 5)
on each; ONE JSON object on stdout (`predict_images`): per image the centre, the zoom, each
joint's name, x, y (0-based pixels of the photo) and belief (about 1 if confident, near 0 for
none); a PNG `<out>/<stem>_pose.png` (skeleton, each stage's beliefs) and a progress line each.
Single-person by design: where the beliefs say otherwise (evaluation/single_person.py) a
`predict: warning:` line names the image, its JSON lists it in "warnings", exit status 0. Where to
look (`multiscale.place_person`): centred and as tall as the image (the LSP rule: zoom 0.8 x
input / height), or --center X,Y and --scale S (the person's height, px). Photos over
--max_image_side px are resized first (JPEGs decoded reduced); joints stay in the photo's pixels.
A video (any FFmpeg reads; one per command) follows its person frame to frame and writes
<out>/<name>.jsonl and <out>/<name>_pose.mp4 (inference/video.py). Errors (a missing or
undecodable image or video, a centre outside it, a model that cannot load, an --out that cannot
be written: checked first) are one line naming the file, exit status 1 (a traceback with -v 1).
"""
import io
import json
import math
import os
import sys
import time

import numpy as np
from absl import flags

from cpm_jax import errors, outputs
from cpm_jax.inference.resizing import MAX_IMAGE_SIDE, resized, shrink

FLAGS = flags.FLAGS


def parse_center(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as error:
        raise errors.InputError(f"--center {text!r}: expected X,Y in pixels, e.g. 120,240") from error
    if not (np.isfinite(x) and np.isfinite(y)):
        raise errors.InputError(f"--center {text!r}: expected finite pixel coordinates")
    return x, y


def _read(path: str) -> bytes:
    if not os.path.exists(path):
        raise errors.InputError(f"{path}: no such image file")
    if not os.path.isfile(path):
        raise errors.InputError(f"{path}: is a directory, not an image file")
    with open(path, "rb") as f:
        return f.read()


def load_photo(path: str, max_side: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """(the photo as `shrink(image, max_side)` gives it, its own (width, height), the (x, y) ratio
    of that image's px to the photo's: photo px p -> (p + 0.5) x ratio - 0.5). InputError (missing)
    or BadExampleError (undecodable) naming the file. A photo over `max_side` px is resized as PIL decoded it, without NumPy copies of
    the full size; a JPEG is even decoded at 1/2, 1/4 or 1/8 of its size where that still has
    `max_side` px (PIL's `draft`: the DCT's own scaling), so its full size is never held."""
    from data_pipelines import sources
    data = _read(path)
    reduced = _decode_reduced(data, max_side)
    if reduced is not None:
        return reduced
    image = sources.decode_image(data, path)
    small, ratio = shrink(image, max_side)
    return small, (image.shape[1], image.shape[0]), ratio


def _decode_reduced(data: bytes, max_side: int):
    """`load_photo`'s answer for a photo over `max_side` px; None for a smaller one, a 16-bit
    one (`decode_image`'s rule) or any failure (`decode_image` then names the file and why)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max(width, height) <= max_side or image.mode.startswith("I"):
                return None
            scale = 1.0
            if image.format == "JPEG":
                ratio = max_side / max(width, height)
                drafted = image.draft("RGB", (math.ceil(width * ratio), math.ceil(height * ratio)))
                if drafted is not None:
                    scale = width / drafted[1][2]       # its box: the photo's extent in decoded px
            image.load()                                # a truncated file raises here
            small, ratio = resized(image if image.mode == "RGB" else image.convert("RGB"), max_side)
            return small, (width, height), ratio / scale
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _picture_path(out: str, image_path: str, taken: set) -> str:
    stem = os.path.splitext(os.path.basename(image_path))[0] or "image"
    path, n = os.path.join(out, f"{stem}_pose.png"), 1
    while path in taken:
        n += 1
        path = os.path.join(out, f"{stem}_{n}_pose.png")
    taken.add(path)
    return path


def _not_one_person(evidence, placed_by_rule: bool) -> str:
    """The warning for a prediction whose beliefs say it is not one person where the model looked."""
    advice = ("give one person's centre and height in px: --center X,Y --scale PX" if placed_by_rule
              else "check that --center X,Y --scale PX point at one person")
    return f"may not show one person ({'; '.join(evidence.reasons())}): the model is single-person; {advice}"


def predict_images(workdir: str | None, paths: list[str], center: tuple[float, float] | None = None,
                   scale: float | None = None, out: str = "predict_out", options=None,
                   max_side: int = 384, max_image_side: int = MAX_IMAGE_SIDE, log=None,
                   pretrained_name: str | None = None, gallery: str | None = None,
                   model_path: str | None = None) -> dict:
    """The report printed by the command line; writes the PNGs. The model (exactly one): the
    newest checkpoint of `workdir`, the shipped model `pretrained_name` (cpm_jax/pretrained.py),
    or an exported file `model_path` run in its own runtime (inference/models.py). `gallery`: also
    one PNG of every image's picture, one above the other. `log(line)` receives a progress line
    per image (default: stderr). The report (units: the module docstring):

      {"workdir", "pretrained", "model" (the one given; the others null), "runtime" ("jax", or the
       exported model's: "onnxruntime", "tensorflow", "tflite"), "checkpoint_step" (null for an
       exported model), "dataset" (the joint
       order's dataset), "stage" (the stage whose joints are listed: the last), "scales", "flip",
       "subpixel", "gallery" (the --gallery PNG or null),
       "images": [{"image", "width", "height", "center" [x, y], "base_factor", "person" (how the
                   centre and size were chosen), "picture" (the PNG),
                   "joints": [{"name", "x", "y", "belief"}, ...],
                   "single_person" (single_person.Evidence: "mean_belief", "two_peak_parts",
                   "long_limbs"), "warnings" (the lines warned about the image, [] if none)}]}"""
    from cpm_jax import visualize
    from cpm_jax.evaluation import multiscale, single_person
    from cpm_jax.inference import models
    from data_pipelines import registry

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if not paths:
        raise errors.InputError("no image given: python -m cpm_jax.predict --workdir DIR IMAGE...")
    source = models.Source(workdir, pretrained_name, model_path)      # InputError: not exactly one
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise errors.InputError(f"--scale {scale}: the person's size in pixels must be > 0")
    outputs.check_directory(out, "--out")                 # before the model loads
    if gallery:
        if not gallery.lower().endswith(".png"):
            raise errors.InputError(f"--gallery {gallery}: the gallery is a PNG; give a path ending in .png")
        outputs.check_file(gallery, "--gallery")
    config = models.open_config(source)                  # errors name the checkpoint, record or file
    # Each photo at most max_image_side px, decoded before the model loads (a bad file fails first).
    photos = [load_photo(p, max_image_side) for p in paths]
    size = config.model.input_size
    placed = [multiscale.place_person((h, w), config.data, size, center, scale) for _, (w, h), _ in photos]
    model = models.load(source)                           # CheckpointError: missing, corrupt
    config = model.config
    num_stages = config.model.num_stages
    options = options or multiscale.Options()
    options = multiscale.Options(scales=options.scales, stages=tuple(range(1, num_stages + 1)),
                                 flip=options.flip, subpixel=options.subpixel, batch_size=1,
                                 canvas_multiple=options.canvas_multiple)
    predictor = model.predictor(options)
    order = registry.get(config.data.dataset).skeleton
    os.makedirs(out, exist_ok=True)
    results, taken = [], set()
    for k, (path, (small, (width, height), ratio), (person, how)) in enumerate(zip(paths, photos, placed), 1):
        started = time.perf_counter()
        note = "" if small.shape[:2] == (height, width) else f", resized to {small.shape[1]}x{small.shape[0]}"
        log(f"predict: [{k}/{len(paths)}] {path} ({width}x{height}{note})")
        # The same placement in the resized image's pixels (centre px p -> (p + 0.5) r - 0.5).
        where = multiscale.Person(tuple((np.asarray(person.center) + 0.5) * ratio - 0.5),
                                  person.base_factor / float(ratio[1]))
        prediction = predictor.predict_with_maps(small, where, max_side)
        shown, peak, maps, _ = prediction
        # Back to the photo's own pixels (inside it: a JPEG decoded at 1/s may pad its last block).
        joints = np.clip((shown + 0.5) / ratio - 0.5, 0, [width - 1, height - 1])
        evidence = single_person.of_prediction(prediction, where.base_factor, size, order)
        warnings = [_not_one_person(evidence, center is None or scale is None)] if evidence.reasons() else []
        for warning in warnings:
            log(f"predict: warning: {path}: {warning}")
        picture = _picture_path(out, path, taken)
        with outputs.writing(picture):                    # drawn on the image the network saw
            visualize.pose_and_beliefs(small, shown, maps, picture, order, stages=predictor.stages,
                                       title=f"{os.path.basename(path)}: stage {num_stages}")
        log(f"predict: [{k}/{len(paths)}] done in {time.perf_counter() - started:.1f}s -> {picture}")
        results.append({
            "image": path, "width": int(width), "height": int(height),
            "center": [float(person.center[0]), float(person.center[1])],
            "base_factor": float(person.base_factor), "person": how, "picture": picture,
            "joints": [{"name": name, "x": float(x), "y": float(y), "belief": float(b)}
                       for name, (x, y), b in zip(order.joint_names, joints[-1], peak[-1])],
            "single_person": evidence.as_dict(), "warnings": warnings,
        })
    if gallery:
        with outputs.writing(gallery):
            visualize.stack_pictures([r["picture"] for r in results], gallery)
        log(f"predict: wrote the gallery {gallery}")
    return {**source.as_dict(), "runtime": model.runtime, "checkpoint_step": model.step,
            "dataset": config.data.dataset,
            "stage": num_stages, "scales": list(options.scales), "flip": options.flip,
            "subpixel": options.subpixel, "gallery": gallery, "images": results}


def main(argv) -> None:
    from cpm_jax.evaluation import multiscale
    from cpm_jax.inference import frames, models, video
    center = parse_center(FLAGS.center) if FLAGS.center else None
    options = multiscale.Options(scales=multiscale.parse_scales(FLAGS.scales), flip=FLAGS.flip,
                                 subpixel=FLAGS.subpixel)
    paths = list(argv[1:])
    videos = [p for p in paths if frames.is_video(p)]
    if videos:                          # one video per command: cpm_jax/inference/video.py
        if len(paths) > 1:
            others = "another video" if len(videos) > 1 else "photos"
            raise errors.InputError(f"{videos[0]}: a video is predicted alone, without {others} "
                                    f"({', '.join(p for p in paths if p != videos[0])}); run predict once per video")
        if FLAGS.gallery:
            raise errors.InputError(f"--gallery {FLAGS.gallery}: a gallery is of photos; a video gets "
                                    "<out>/<name>_pose.mp4")
        report = video.run(models.Source(FLAGS.workdir, FLAGS.pretrained, FLAGS.model), videos[0], FLAGS.out,
                           options, center, FLAGS.scale, FLAGS.every, FLAGS.max_frames or None,
                           max_side=FLAGS.max_image_side)
        print(json.dumps(report, indent=2))
        return
    report = predict_images(FLAGS.workdir, paths, center, FLAGS.scale, FLAGS.out, options,
                            max_image_side=FLAGS.max_image_side, pretrained_name=FLAGS.pretrained,
                            gallery=FLAGS.gallery, model_path=FLAGS.model)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none. Set-up
    # first: the flags need multiscale, which imports TensorFlow.
    from cpm_jax import cli, runtime
    runtime.setup()
    from cpm_jax.evaluation import multiscale
    flags.DEFINE_string("workdir", None, "Training workdir: its newest checkpoint and config.json.")
    flags.DEFINE_string("pretrained", None, "Instead of --workdir: a model shipped in pretrained/ by "
                        "name (e.g. lspet_cpu), or the path of its .npz.")
    flags.DEFINE_string("model", None, "Instead of --workdir: an exported model run in its own runtime "
                        "(python -m cpm_jax.export): DIR/model.onnx, DIR/model.tflite, DIR/saved_model or DIR.")
    flags.DEFINE_string("center", None, "The person's centre X,Y in pixels (default: the image centre).")
    flags.DEFINE_float("scale", None, "The person's size in pixels, about their height (the records' "
                       "scale: 200 x MPII's); default: the image height rule (0.8 x input / height).")
    flags.DEFINE_string("out", "predict_out", "Directory for the PNGs (a video: <name>.jsonl and "
                        "<name>_pose.mp4).")
    flags.DEFINE_string("gallery", None, "Also write every image's picture, one above the other, to this PNG.")
    flags.DEFINE_integer("max_image_side", MAX_IMAGE_SIDE, "Photos (and video frames) larger than this "
                         "(px, longer side) are resized to it first; joints are in their own pixels.")
    flags.DEFINE_integer("every", 1, "Videos: predict every N-th frame (the pose video has the "
                         "video's frame rate / N).")
    flags.DEFINE_integer("max_frames", 0, "Videos: stop after this many predicted frames (0: all).")
    multiscale.define_flags()
    flags.mark_flags_as_mutual_exclusive(["workdir", "pretrained", "model"], required=True)
    cli.run(main)
