"""Benchmark evaluation, one subcommand per task (argv[1] selects it):

    python -m cpm_jax.evaluate score --dataset lsp --annotations lsp_dataset/joints.mat \\
        --predictions pred_lsp.mat [--threshold 0.2] [--json] [--plot pck.png]

`score` scores a prediction file (any format of prediction_files.py: the authors' release files,
MPII N x 16 x 2 arrays in .h5/.npy/.mat, this project's .npz) against official annotations:

  lsp   `joints.mat` of LSP (3 x 14 x 2000): --split test (default: images 1001-2000) or train
        (1-1000). PCK@0.2 by default; all 14 joints count.
  flic  `examples.mat`: --split test (default: the istest examples, file order) or train
        (istrain; the file's labels, not swapped). PCK@0.2 of elbows and wrists by default.
  mpii  a .mat whose `annolist` follows the official structure, PCKh@0.5 by default:
        - the full release (`RELEASE`): --split valid with --mpii_validation (Tompson et al.'s
          detections.mat: its people, in its order) or --split train (every annotated person of
          the training images, less the validation people when --mpii_validation is given);
        - a one-person-per-entry file (a top-level `annolist`, one `annorect` per entry, fields as
          the release, e.g. the 2,958-person validation split): its entries in order
          (--split entries, the default for such a file; also forces this reading of a RELEASE).

Output: a table, or with --json one JSON object as the last line: "total", "joints" and "parts"
(percent; parts: head, shoulder, elbow, wrist, hip, knee, ankle, as the dataset has them), "curve"
(totals over the default thresholds) and what was scored. --plot writes the PCK curve as a PNG.
Problems (a file that cannot be read, an unknown format, a wrong shape, a count that does not match
the annotations, NaN) print a message naming the file and exit with status 1.

Adding a subcommand: write `_define_<name>_flags()` (absl flag definitions) and `<name>_main(argv)`,
and add them to SUBCOMMANDS. Flags are defined only for the chosen subcommand, under __main__, so
importing this module defines none and subcommands may reuse flag names.
"""
import dataclasses
import json
import os
import sys
from typing import Callable

import numpy as np
import scipy.io
from absl import app, flags

from cpm_jax import metrics, prediction_files
from data_pipelines import flic, lsp, matfile, mpii, skeleton

SPLITS = {"lsp": ("test", "train"), "flic": ("test", "train"), "mpii": ("valid", "train", "entries")}
GROUP_TITLES = {"head": "Head", "shoulder": "Sho.", "elbow": "Elb.", "wrist": "Wri.", "hip": "Hip",
                "knee": "Knee", "ankle": "Ank."}


class EvaluationError(ValueError):
    """Annotations and predictions that cannot be scored together; the message names the file."""


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """The scored examples of an annotation file, in the project's joint order, 0-based pixels."""
    benchmark: str                  # lsp, flic, mpii
    path: str
    split: str | None               # None: the file's own list of people (mpii entries)
    description: str                # what is scored, in words
    joints: np.ndarray              # (N, P, 2)
    counted: np.ndarray             # (N, P) bool: the joints that count
    head_boxes: np.ndarray | None   # (N, 4) x1 y1 x2 y2 (mpii; NaN where absent)
    where: tuple[str, ...]          # (N,) each example in the file's own notation

    def __len__(self) -> int:
        return len(self.joints)

    def take(self, rows: np.ndarray) -> "GroundTruth":
        return dataclasses.replace(
            self, joints=self.joints[rows], counted=self.counted[rows],
            head_boxes=None if self.head_boxes is None else self.head_boxes[rows],
            where=tuple(self.where[r] for r in rows),
            description=f"{self.description}; {len(rows)} of {len(self)} examples")


# ------------------------------------------------------------------------------------ annotations

def load_lsp(path: str, split: str = "test") -> GroundTruth:
    """LSP `joints.mat` (3 x 14 x 2000, 1-based): the test (1001-2000) or train (1-1000) images."""
    layout, joints = lsp.read_joints(path)
    if layout != "lsp":
        raise EvaluationError(f"{path}: 'joints' is 14 x 3 x N (the LSP Extended layout); the LSP "
                              "benchmark's joints.mat is 3 x 14 x 2000")
    if len(joints) != 2000:
        raise EvaluationError(f"{path}: 'joints' is 3 x 14 x {len(joints)}; LSP's joints.mat is "
                              "3 x 14 x 2000 (images 1-1000 train, 1001-2000 test)")
    rows = {"test": lsp.LSP_TEST, "train": lsp.LSP_TRAIN}[split]
    joints = joints[rows.start:rows.stop, :, :2] - 1.0
    bad = ~np.isfinite(joints).all(-1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise EvaluationError(f"{path}: image {rows.start + i + 1} joint {skeleton.LSP.joint_names[j]} "
                              "is not a number; LSP labels every joint")
    return GroundTruth("lsp", path, split, f"LSP {split} images {rows.start + 1}-{rows.stop}", joints,
                       np.ones(joints.shape[:2], bool), None,
                       tuple(f"image {i + 1}" for i in rows))


def load_flic(path: str, split: str = "test") -> GroundTruth:
    """FLIC `examples.mat`: the istest (or istrain) examples in file order, the file's labels."""
    examples = flic.load_examples(path)
    chosen = [i for i, e in enumerate(examples) if (e.istest if split == "test" else e.istrain)]
    if not chosen:
        raise EvaluationError(f"{path}: no example has is{split} set")
    joints = np.zeros((len(chosen), flic.NUM_JOINTS, 2))
    counted = np.zeros((len(chosen), flic.NUM_JOINTS), bool)
    for row, i in enumerate(chosen):
        joints[row], visibility = flic.labels(examples[i].coords, swap=False)
        counted[row] = visibility > 0
    scored = [flic.JOINT_INDEX[n] for n in metrics.BENCHMARKS["flic"].scored]
    torso = list(skeleton.FLIC.torso_indices)
    missing = counted[:, scored].any(1) & ~counted[:, torso].all(1)
    if missing.any():
        raise EvaluationError(f"{path}: examples({chosen[int(np.argmax(missing))] + 1}) has no "
                              f"ground-truth {' or '.join(skeleton.FLIC.torso)}, the PCK normaliser "
                              f"({missing.sum()} such examples)")
    return GroundTruth("flic", path, split, f"FLIC {split} examples (is{split}, file order)", joints,
                       counted, None, tuple(f"examples({i + 1})" for i in chosen))


def _mpii_truth(path: str, split: str | None, description: str, people: list) -> GroundTruth:
    """people: Person or None (an entry without annotated joints), in scoring order."""
    n = len(people)
    joints = np.zeros((n, skeleton.NUM_JOINTS, 2))
    counted = np.zeros((n, skeleton.NUM_JOINTS), bool)
    boxes = np.full((n, 4), np.nan)
    where = []
    for row, person in enumerate(people):
        if person is None:
            where.append(f"annolist({row + 1})")
            continue
        where.append(person.where)
        joints[row] = person.joints
        counted[row] = person.visibility > 0
        if person.head_box is not None:
            boxes[row] = person.head_box
        elif counted[row].any():
            raise EvaluationError(f"{path}: {person.where} has annotated joints but no head box "
                                  "(x1 y1 x2 y2), the PCKh normaliser")
    bad = counted.any(1) & ~np.isfinite(boxes).all(1)
    if bad.any():
        raise EvaluationError(f"{path}: {where[int(np.argmax(bad))]}: head box is not a number")
    return GroundTruth("mpii", path, split, description, joints, counted, boxes, tuple(where))


def _mpii_entries(path: str, top_level: bool) -> GroundTruth:
    """One person per annolist entry (the validation-split files)."""
    mat = mpii._load(path)
    annolist = mat["annolist"] if top_level else matfile.field(mat["RELEASE"], "annolist", f"{path}: RELEASE")
    people = []
    for i, entry in enumerate(matfile.as_list(annolist)):
        where = f"{path}: annolist({i + 1})"
        rects = matfile.as_list(matfile.field(entry, "annorect", where))
        if len(rects) != 1:
            raise EvaluationError(f"{where} has {len(rects)} annorect; a one-person-per-entry file "
                                  "has exactly one (for the full release use --split valid or train)")
        points = mpii._points(rects[0], f"{where}.annorect(1)")
        if not points:
            people.append(None)
            continue
        name = ""
        if "image" in entry._fieldnames and hasattr(entry.image, "_fieldnames") and \
                "name" in entry.image._fieldnames:
            name = entry.image.name
        people.append(mpii._person(rects[0], points, i, 0, name, path))
    if not people:
        raise EvaluationError(f"{path}: 'annolist' is empty")
    return _mpii_truth(path, None, f"MPII: the {len(people)} annolist entries, one person each", people)


def load_mpii(path: str, split: str | None = None, validation_file: str | None = None) -> GroundTruth:
    """MPII people from a release-structured .mat (see the module docstring for the two kinds)."""
    try:
        variables = [name for name, _, _ in scipy.io.whosmat(path)]
    except matfile.MAT_ERRORS as error:
        raise EvaluationError(f"{path}: cannot read as a MATLAB file: {error}") from error
    if "RELEASE" not in variables:
        if "annolist" not in variables:
            raise EvaluationError(f"{path}: neither 'RELEASE' nor 'annolist' (found: "
                                  f"{', '.join(variables) or 'nothing'}); not MPII annotations")
        if split not in (None, "entries"):
            raise EvaluationError(f"{path}: a one-person-per-entry file (top-level 'annolist') lists "
                                  f"its own people; --split {split} applies to the full release")
        return _mpii_entries(path, top_level=True)
    if split == "entries":
        return _mpii_entries(path, top_level=False)
    if split is None:
        if validation_file is None:
            raise EvaluationError(f"{path}: the full MPII release: choose the people with --split "
                                  "valid (and --mpii_validation) or --split train")
        split = "valid"
    if split == "valid" and validation_file is None:
        raise EvaluationError(f"{path}: --split valid needs --mpii_validation (Tompson et al.'s "
                              "detections.mat with RELEASE_img_index and RELEASE_person_index)")
    _, chosen = mpii.select_people(path, split, validation_file)
    if split == "train":
        description = "MPII training people" + (" less the validation people" if validation_file else "")
    else:
        description = f"MPII validation people of {os.path.basename(validation_file)}"
    if not chosen:
        raise EvaluationError(f"{path}: no annotated people in split {split}")
    return _mpii_truth(path, split, description, chosen)


def load_annotations(benchmark: str, path: str, split: str | None = None,
                     mpii_validation: str | None = None) -> GroundTruth:
    """The scored examples of `path` for benchmark lsp, flic or mpii (see the module docstring)."""
    if benchmark not in SPLITS:
        raise ValueError(f"unknown dataset {benchmark!r}; known: {', '.join(SPLITS)}")
    if split is not None and split not in SPLITS[benchmark]:
        raise EvaluationError(f"{benchmark}: unknown split {split!r}; known: {', '.join(SPLITS[benchmark])}")
    if not os.path.isfile(path):
        raise EvaluationError(f"{path}: no such file")
    if mpii_validation is not None and benchmark != "mpii":
        raise EvaluationError(f"--mpii_validation applies to mpii, not {benchmark}")
    if benchmark == "lsp":
        return load_lsp(path, split or "test")
    if benchmark == "flic":
        return load_flic(path, split or "test")
    return load_mpii(path, split, mpii_validation)


# ----------------------------------------------------------------------------------------- score

def match(truth: GroundTruth, predictions: prediction_files.Predictions,
          allow_subset: bool = False) -> GroundTruth:
    """The annotations' rows the predictions are for: all of them, in order (a foreign file must
    have exactly that many rows); a project file's `index` picks them, and a subset of the
    examples is an error unless `allow_subset`."""
    path, n, m = predictions.path, len(predictions), len(truth)
    if predictions.format == "project":
        split = predictions.info.get("split")
        if truth.split is not None and split != truth.split:
            raise EvaluationError(f"{path}: predictions of split {split!r}, but the annotations "
                                  f"({truth.path}) are scored as split {truth.split!r}")
        index = predictions.index
        if len(np.unique(index)) != n or (n and (index.min() < 0 or index.max() >= m)):
            raise EvaluationError(f"{path}: 'index' must name distinct examples 0..{m - 1} of the "
                                  f"{m} in {truth.path}")
        if n == m and np.array_equal(index, np.arange(m)):
            return truth
        if n != m and not allow_subset:
            raise EvaluationError(f"{path}: predictions for {n} of the {m} examples in {truth.path}; "
                                  "score a subset only with --allow_subset")
        return truth.take(index)
    if n != m:
        raise EvaluationError(f"{path}: {n} predictions, but {truth.path} has {m} examples to score "
                              f"({truth.description})")
    return truth


def _percent(value):
    return None if value is None else 100.0 * value


def score(truth: GroundTruth, joints: np.ndarray, threshold: float | None = None) -> dict:
    """{"threshold", "total", "joints", "parts", "counted", "curve"} as fractions (metrics.score and
    metrics.curve over the benchmark's default thresholds) of (N, P, 2) 0-based project-order
    `joints` that match `truth` row for row."""
    b = metrics.BENCHMARKS[truth.benchmark]
    threshold = b.default_threshold if threshold is None else float(threshold)
    result = metrics.score(truth.benchmark, joints, truth.joints, threshold, truth.counted, truth.head_boxes)
    result["threshold"] = threshold
    result["curve"] = metrics.curve(truth.benchmark, joints, truth.joints, None, truth.counted,
                                    truth.head_boxes)
    return result


def score_files(benchmark: str, annotations: str, predictions: str, threshold: float | None = None,
                split: str | None = None, fmt: str | None = None, mpii_validation: str | None = None,
                allow_subset: bool = False) -> tuple[dict, dict]:
    """(report in percent, as `score --json` prints it; the curve in fractions) for two files."""
    read = prediction_files.read(predictions, benchmark, fmt)
    truth = load_annotations(benchmark, annotations, split, mpii_validation)
    truth = match(truth, read, allow_subset)
    try:
        result = score(truth, read.joints, threshold)
    except ValueError as error:      # what the readers let through and the metric rejects
        raise EvaluationError(f"{predictions} against {annotations}: {error}") from error
    b = metrics.BENCHMARKS[benchmark]
    report = {
        "dataset": benchmark, "metric": b.metric, "threshold": result["threshold"],
        "normaliser": b.normaliser,
        "total": _percent(result["total"]),
        "joints": {k: _percent(v) for k, v in result["joints"].items()},
        "parts": {k: _percent(v) for k, v in result["parts"].items()},
        "num_examples": len(truth), "num_joints": result["counted"],
        "annotations": annotations, "split": truth.split, "scored": truth.description,
        "predictions": predictions, "format": read.format,
        "curve": {"thresholds": result["curve"]["thresholds"],
                  "total": [_percent(v) for v in result["curve"]["total"]]},
    }
    if read.format == "project":
        report["stage"] = read.info.get("stage")
    return report, result["curve"]


def _cell(value, width: int = 6) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def format_table(report: dict) -> str:
    """The report as readable text: the paper's row (groups and total), then every joint."""
    label = f"{report['metric']}@{report['threshold']:g}"
    lines = [f"{report['dataset'].upper()} {label}  (normaliser: {report['normaliser']})",
             f"  annotations: {report['annotations']}  ({report['scored']}, {report['num_examples']} examples)",
             f"  predictions: {report['predictions']}  ({report['format']}"
             + (f", stage {report['stage']}" if report.get("stage") is not None else "") + ")",
             ""]
    groups = list(report["parts"])
    lines.append("  " + " ".join(f"{GROUP_TITLES.get(g, g):>6}" for g in groups) + " | " + f"{'Total':>6}")
    lines.append("  " + " ".join(_cell(report["parts"][g]) for g in groups) + " | " + _cell(report["total"]))
    lines.append("")
    lines.append(f"  {'joint':<12} {label:>9}")
    for name, value in report["joints"].items():
        lines.append(f"  {name:<12} {_cell(value, 9)}")
    lines.append(f"  {'total':<12} {_cell(report['total'], 9)}   ({report['num_joints']} scored joints)")
    return "\n".join(lines)


FLAGS = flags.FLAGS


def _define_score_flags() -> None:
    flags.DEFINE_enum("dataset", None, list(SPLITS), "Benchmark: lsp (PCK), flic (PCK, elbows and "
                      "wrists) or mpii (PCKh).")
    flags.DEFINE_string("annotations", None, "Official annotation file: LSP joints.mat, FLIC "
                        "examples.mat, MPII release .mat or a one-person-per-entry annolist .mat.")
    flags.DEFINE_string("predictions", None, "Prediction file (formats: cpm_jax/prediction_files.py).")
    flags.DEFINE_float("threshold", None, "PCK threshold a (default 0.2 for lsp and flic, 0.5 for mpii).")
    flags.DEFINE_bool("json", False, "Print one JSON object (the last line) instead of a table.")
    flags.DEFINE_string("plot", None, "Write the PCK curve to this PNG.")
    flags.DEFINE_string("split", None, "lsp, flic: test (default) or train; mpii: valid, train or "
                        "entries (see the module docstring).")
    flags.DEFINE_enum("format", "auto", ["auto", *prediction_files.FORMATS],
                      "Prediction file format (auto: from extension and contents).")
    flags.DEFINE_string("mpii_validation", None, "mpii: Tompson et al.'s detections.mat (the "
                        "validation people; --split valid scores them, --split train leaves them out).")
    flags.DEFINE_bool("allow_subset", False, "Score a project file that covers only some examples "
                      "(its 'index' picks them).")
    flags.mark_flags_as_required(["dataset", "annotations", "predictions"])


def score_main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        report, curve = score_files(FLAGS.dataset, FLAGS.annotations, FLAGS.predictions,
                                    FLAGS.threshold, FLAGS.split, FLAGS.format, FLAGS.mpii_validation,
                                    FLAGS.allow_subset)
        if FLAGS.plot:
            from cpm_jax import visualize
            os.makedirs(os.path.dirname(os.path.abspath(FLAGS.plot)), exist_ok=True)
            visualize.pck_curve(curve, FLAGS.plot, f"{report['dataset'].upper()}: "
                                f"{os.path.basename(FLAGS.predictions)}", report["metric"])
            report["plot"] = FLAGS.plot
    except (ValueError, OSError) as error:   # BadExampleError, PredictionFileError, EvaluationError
        print(f"evaluate score: error: {error}", file=sys.stderr)
        sys.exit(1)
    if FLAGS.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
        if FLAGS.plot:
            print(f"\nwrote {FLAGS.plot}")


@dataclasses.dataclass(frozen=True)
class Subcommand:
    define_flags: Callable[[], None]
    main: Callable[[list], None]
    help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "score": Subcommand(_define_score_flags, score_main,
                        "score a prediction file against official annotations"),
}


def _usage() -> str:
    return ("usage: python -m cpm_jax.evaluate SUBCOMMAND [--flags]  (SUBCOMMAND --help for its flags)\n"
            + "\n".join(f"  {name:<8} {s.help}" for name, s in SUBCOMMANDS.items()))


def run_subcommand(argv: list[str]) -> None:
    """argv[1] names the subcommand; its flags are defined, then absl runs it on argv[2:]."""
    name = argv[1] if len(argv) > 1 else None
    if name in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0)
    if name not in SUBCOMMANDS:
        print((f"unknown subcommand {name!r}\n" if name else "no subcommand\n") + _usage(), file=sys.stderr)
        sys.exit(1)
    command = SUBCOMMANDS[name]
    command.define_flags()
    app.run(command.main, argv=[f"{argv[0]} {name}", *argv[2:]])


if __name__ == "__main__":
    # Flags are defined here (through run_subcommand) so that importing this module defines none.
    run_subcommand(sys.argv)
