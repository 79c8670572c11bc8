"""The pose of one person in your own photos, with a trained workdir's newest checkpoint.

    python -m cpm_jax.predict --workdir runs/lsp photo.jpg [more.jpg ...] \\
        [--center X,Y] [--scale S] [--out DIR] [--scales 0.7,0.8,...] [--flip] [--subpixel]

Runs the release's multi-scale test (cpm_jax/test_time.py, reference section 5) on each image and
prints ONE JSON object on stdout:

  {"workdir", "checkpoint_step", "dataset" (the joint order's dataset), "stage" (the stage whose
   joints are listed: the last), "scales", "flip", "subpixel",
   "images": [{"image", "width", "height", "center" [x, y], "base_factor", "person" (how the
               centre and size were chosen), "picture" (the PNG),
               "joints": [{"name", "x", "y", "belief"}, ...]}]}

x, y: 0-based pixels of the image as stored (the centre of the top-left pixel is (0, 0));
belief: the part's belief at that pixel, averaged over the scales (about 1 for a confident
prediction, near 0 for none). For every image a PNG `<out>/<image stem>_pose.png` shows the
skeleton with joint names and the belief maps stage by stage.

Where to look: without --center and --scale the person is assumed centred and as tall as the
image, as the release's LSP test did (centre = image centre, base zoom 0.8 x input size / image
height). --center X,Y: the person's centre in pixels; --scale S: the person's size in pixels (the
records' scale, 200 x MPII's scale unit: about the person's height), giving the training zoom
config.data.person_height x input size / S. Both apply to every image given.

Errors (a missing or undecodable image, a workdir without a checkpoint or config.json) print a
message naming the file or directory and exit with status 1.
"""
import json
import os
import sys

import numpy as np
from absl import app, flags

from cpm_jax import checkpointing

FLAGS = flags.FLAGS


def parse_center(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as error:
        raise ValueError(f"--center {text!r}: expected X,Y in pixels, e.g. 120,240") from error
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"--center {text!r}: expected finite pixel coordinates")
    return x, y


def load_image(path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file; ValueError / OSError naming the file."""
    from data_pipelines import sources
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such image file")
    if not os.path.isfile(path):
        raise IsADirectoryError(f"{path}: not an image file")
    with open(path, "rb") as f:
        data = f.read()
    return sources.decode_image(data, path)      # BadExampleError (a ValueError) naming the file


def _picture_path(out: str, image_path: str, taken: set) -> str:
    stem = os.path.splitext(os.path.basename(image_path))[0] or "image"
    path, n = os.path.join(out, f"{stem}_pose.png"), 1
    while path in taken:
        n += 1
        path = os.path.join(out, f"{stem}_{n}_pose.png")
    taken.add(path)
    return path


def predict_images(workdir: str, paths: list[str], center: tuple[float, float] | None = None,
                   scale: float | None = None, out: str = "predict_out", options=None,
                   max_side: int = 384) -> dict:
    """The report printed by the command line (see the module docstring); writes the PNGs."""
    from cpm_jax import test_time, visualize
    from data_pipelines import registry

    if not paths:
        raise ValueError("no image given: python -m cpm_jax.predict --workdir DIR IMAGE...")
    checkpointing.open_latest(workdir)                # NoCheckpointError naming the directory
    config = checkpointing.read_config(workdir)      # RuntimeError naming config.json
    images = [load_image(p) for p in paths]           # fail on a bad file before the model loads
    variables, step = test_time.restore_variables(workdir, config)
    num_stages, size = config.model.num_stages, config.model.input_size
    options = options or test_time.Options()
    options = test_time.Options(scales=options.scales, stages=tuple(range(1, num_stages + 1)),
                                flip=options.flip, subpixel=options.subpixel, batch_size=1,
                                canvas_multiple=options.canvas_multiple)
    predictor = test_time.MultiScalePredictor.for_model(config, variables, options)
    order = registry.get(config.data.dataset).skeleton
    os.makedirs(out, exist_ok=True)
    results, taken = [], set()
    for path, image in zip(paths, images):
        height, width = image.shape[:2]
        if scale is not None:
            where = (width - 1) / 2.0, (height - 1) / 2.0
            person = test_time.person_from_scale(center or where, scale, config.data, size)
            how = f"{'--center' if center else 'image centre'} and --scale {scale:g} px"
        else:
            person = test_time.person_from_image(height, width, size)
            how = "image centre and height (the LSP rule)"
            if center is not None:
                person = test_time.Person(center, person.base_factor)
                how = "--center and the image height (the LSP rule's size)"
        joints, peak, maps, _ = predictor.predict_with_maps(image, person, max_side)
        picture = _picture_path(out, path, taken)
        visualize.pose_and_beliefs(image, joints, maps, picture, order, stages=predictor.stages,
                                   title=f"{os.path.basename(path)}: stage {num_stages}")
        results.append({
            "image": path, "width": int(width), "height": int(height),
            "center": [float(person.center[0]), float(person.center[1])],
            "base_factor": float(person.base_factor), "person": how, "picture": picture,
            "joints": [{"name": name, "x": float(x), "y": float(y), "belief": float(b)}
                       for name, (x, y), b in zip(order.joint_names, joints[-1], peak[-1])],
        })
    return {"workdir": workdir, "checkpoint_step": int(step), "dataset": config.data.dataset,
            "stage": num_stages, "scales": list(options.scales), "flip": options.flip,
            "subpixel": options.subpixel, "images": results}


def main(argv) -> None:
    from absl import logging
    from cpm_jax import test_time
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
    logging.set_verbosity(logging.WARNING)
    try:
        center = parse_center(FLAGS.center) if FLAGS.center else None
        if FLAGS.scale is not None and not (np.isfinite(FLAGS.scale) and FLAGS.scale > 0):
            raise ValueError(f"--scale {FLAGS.scale}: the person's size in pixels must be > 0")
        options = test_time.Options(scales=test_time.parse_scales(FLAGS.scales), flip=FLAGS.flip,
                                    subpixel=FLAGS.subpixel)
        report = predict_images(FLAGS.workdir, list(argv[1:]), center, FLAGS.scale, FLAGS.out, options)
    except (ValueError, OSError, RuntimeError) as error:   # bad image, NoCheckpointError, ...
        print(f"predict: error: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    flags.DEFINE_string("workdir", None, "Training workdir: its newest checkpoint and config.json.")
    flags.DEFINE_string("center", None, "The person's centre X,Y in pixels (default: the image centre).")
    flags.DEFINE_float("scale", None, "The person's size in pixels, about their height (the records' "
                       "scale: 200 x MPII's); default: the image height rule (0.8 x input / height).")
    flags.DEFINE_string("out", "predict_out", "Directory for the PNGs.")
    from cpm_jax import test_time
    test_time.define_flags()
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
