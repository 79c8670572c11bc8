"""PNGs of augmented training crops, to check the input pipeline by eye.

    python -m cpm_jax.show_data --config experiments/lsp_paper.py --num 16 --out DIR \
        --config.data.paths.lsp=LSP_DIR --config.data.paths.lspet=LSPET_DIR [--start N] [--config.x=y ...]

For each of `--num` training examples from stream position `--start` (the examples training
step k = start / batch would see), `DIR/example_<position>.png` shows
  (a) the crop with its joints and skeleton (the person's right limbs red, left blue),
  (b) the belief-map targets (max over parts, upsampled to the crop) over the crop, and
  (c) for multi-person datasets, the stage-1 targets (every person's peaks).
Joints that get no peak (visibility 0: unlabelled, or outside the original image) are drawn
as grey crosses, without bones; white rings mark occluded joints; in the target panels cyan
crosses mark the joints that get a peak. `DIR/overview.png` is a contact sheet of every crop
with its skeleton. The paths written are printed, one a line.
"""
import math
import os

import ml_collections
import numpy as np
from absl import flags, logging
from matplotlib.figure import Figure  # drawn without pyplot, as in visualize.py
from ml_collections import config_flags

from cpm_jax import cli, configs, errors, outputs, runtime, visualize
from data_pipelines import registry, skeleton


def read_examples(config: ml_collections.ConfigDict, num: int, start: int = 0) -> list[dict]:
    """`num` augmented training examples (numpy) from stream position `start`.

    The iterator is used up and dropped here, so no tf.data iterator that calls Python outlives
    this call (they hang the interpreter's exit). With `data.skip_bad_examples`, every example
    skipped while reading is logged, one line each naming its file and index."""
    from data_pipelines import pipeline  # TensorFlow: imported when needed, so --help stays quick
    source = registry.open_split(config.data, "train")
    examples = list(pipeline.numpy_iterator(pipeline.train_examples(config, start, source=source).take(num)))
    log = getattr(source, "bad_examples", None)
    if log is not None and log.total_skipped:
        for message in log.skipped:
            logging.warning("skipped (config.data.skip_bad_examples) %s", message)
        if log.total_skipped > len(log.skipped):
            logging.warning("skipped %d bad examples in all, the first %d named above", log.total_skipped,
                            len(log.skipped))
    return examples


def draw_labelled_joints(ax, joints: np.ndarray, visibility: np.ndarray, order: skeleton.Skeleton,
                         alpha: float = 1.0) -> None:
    """The skeleton (visualize.draw_skeleton) over the joints that get a target peak, a grey
    cross on those that do not (visibility 0) and a ring on occluded ones (visibility 1).

    Joints without a peak are left out of the skeleton: for LSPET they are the annotators'
    "not visible" joints, stored at off-image placeholder points, and bones to them mislead."""
    joints, visibility = np.asarray(joints, np.float64), np.asarray(visibility)
    visualize.draw_skeleton(ax, np.where(visibility[:, None] > 0, joints, np.nan), alpha=alpha, order=order)
    for value, kwargs in ((0, dict(marker="x", s=40, c="#9a9a9a", linewidths=1.5)),
                          (1, dict(marker="o", s=40, facecolors="none", edgecolors="white", linewidths=1))):
        chosen = visibility == value
        if chosen.any():
            ax.scatter(joints[chosen, 0], joints[chosen, 1], zorder=4, alpha=alpha, **kwargs)


def _title(dataset: str, example: dict, position: int) -> str:
    return f"{dataset}  index {int(example['index'])}  stream position {position}"


def example_figure(example: dict, dataset: str, position: int, order: skeleton.Skeleton, path: str) -> None:
    """One example's panels (crop + skeleton, targets, stage-1 targets if present) as a PNG."""
    image = visualize.to_uint8(example["image"])
    joints, visibility = example["joints"], example["visibility"]
    panels = [("crop, joints and skeleton", None), ("targets (max over parts)", example["targets"])]
    if "stage1_targets" in example:
        panels.append(("stage-1 targets (everyone)", example["stage1_targets"]))
    fig = Figure(figsize=(4.2 * len(panels), 4.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, maps) in zip(axes[0], panels):
        if maps is None:
            ax.imshow(image)
            draw_labelled_joints(ax, joints, visibility, order)
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
        else:
            visualize.overlay_heatmap(ax, image, maps[..., :-1].max(-1))
            labelled = np.asarray(visibility) > 0
            ax.scatter(joints[labelled, 0], joints[labelled, 1], s=14, marker="+", c="cyan", linewidths=1,
                       zorder=3)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(_title(dataset, example, position) + "    (person's right: red, left: blue)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def contact_sheet(examples: list[dict], positions: list[int], dataset: str, order: skeleton.Skeleton,
                  path: str) -> None:
    """Every crop with its skeleton, in a grid."""
    n = len(examples)
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, example, position in zip(axes.flat, examples, positions):
        image = visualize.to_uint8(example["image"])
        ax.imshow(image)
        draw_labelled_joints(ax, example["joints"], example["visibility"], order)
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        ax.set_title(f"index {int(example['index'])}  pos {position}", fontsize=8)
    fig.suptitle(f"{dataset}: training crops from stream position {positions[0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_pictures(config: ml_collections.ConfigDict, num: int, out: str, start: int = 0) -> list[str]:
    """Validates `config`, writes one PNG per example and `overview.png` to `out`; their paths."""
    configs.validate(config, registry.DATASETS, splits=("train",))  # the only split read here
    if not isinstance(num, int) or num < 1:
        raise errors.InputError(f"--num = {num!r}: must be an integer >= 1")
    if not isinstance(start, int) or start < 0:
        raise errors.InputError(f"--start = {start!r}: must be an integer >= 0")
    outputs.check_directory(out, "--out")      # before any data is read
    name = config.data.dataset
    order = registry.get(name).skeleton
    examples = read_examples(config, num, start)
    if not examples:
        raise errors.DataError(f"dataset {name!r} yielded no training examples")
    # Stream positions are start, start + 1, ...; with data.skip_bad_examples a skipped example
    # shifts the later ones, so the positions shown are then lower bounds.
    positions = [start + i for i in range(len(examples))]
    os.makedirs(out, exist_ok=True)
    paths = []
    for example, position in zip(examples, positions):
        path = os.path.join(out, f"example_{position:06d}.png")
        with outputs.writing(path):
            example_figure(example, name, position, order, path)
        paths.append(path)
    path = os.path.join(out, "overview.png")
    with outputs.writing(path):
        contact_sheet(examples, positions, name, order, path)
    paths.append(path)
    return paths


FLAGS = flags.FLAGS


def main(argv) -> None:
    # A bad value or a missing data path fails at once: the checks need neither TensorFlow nor JAX.
    configs.validate(FLAGS.config, registry.DATASETS, splits=("train",))
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.num < 1:
        raise errors.InputError(f"--num = {FLAGS.num}: must be >= 1")
    if FLAGS.start < 0:
        raise errors.InputError(f"--start = {FLAGS.start}: must be >= 0")
    for path in write_pictures(FLAGS.config, FLAGS.num, FLAGS.out, FLAGS.start):
        print(path)


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.DEFINE_integer("num", 16, "Number of training examples to draw (>= 1).")
    flags.DEFINE_string("out", None, "Directory for the PNGs (created if missing).")
    flags.DEFINE_integer("start", 0, "Stream position of the first example (step x global batch).")
    flags.mark_flags_as_required(["config", "out"])
    cli.run(main)
