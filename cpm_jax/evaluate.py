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

    python -m cpm_jax.evaluate run --workdir DIR [--config EXPERIMENT.py] [--config.key=value ...] \\
        [--split test] [--stages all|last|1,3] [--scales 0.7,0.8,...,1.3] [--flip] [--subpixel] \\
        [--person image|annotated] [--count N] [--batch_size 4] [--out FILE] [--json]

`run` restores the newest checkpoint of a training workdir and runs the release's multi-scale
test (cpm_jax/test_time.py, reference section 5) over a split (default: the config's evaluation
split), with a progress line on stderr (examples, images/s, ETA). The config is the workdir's
config.json by default: the one the checkpoint was trained with, so the network matches it; keys
can be overridden as in train.py (e.g. --config.data.paths.lsp=/data/lsp_dataset when the data
moved, or --config.data.dataset=lsp to test an LSP-order model on LSP). --config EXPERIMENT.py
uses an experiment file instead; its network must be the trained one (checked: every
config.model key that changes parameter shapes). It writes one project prediction file per
evaluated stage (prediction_files.write: `<stem>_stage<t>.npz`, or exactly --out for one stage;
default <workdir>/predictions/<dataset>_<split>_stage<t>.npz), which `score` reads, and prints the
metric of every stage by part group (the paper's Figure 6c), or with --json one JSON object:
  lsp, lsp+lspet  LSP PCK@0.2, all 14 joints (the benchmark; `score` gives the same number);
  flic            FLIC PCK@0.2 of elbows and wrists;
  mpii            PCKh@0.5 with the head boxes read from data.paths.mpii by the reader that made
                  the records (same people, same order); without that path (e.g. TFDS only) it
                  prints LSP-style PCK@0.2 over annotated joints, says so, and PCKh is `score`'s;
  lspet, synthetic  no official benchmark: LSP-style PCK@0.2 over labelled joints of examples
                  whose torso is labelled (as training's held-out evaluation); their files carry
                  dataset names that `score` has no annotations for.
Where to look: --person image (centre and 0.8 x input / image height, the release's LSP rule;
default for lsp and lsp+lspet) or annotated (the record's centre and scale: MPII's objpos and
1.171 / scale, FLIC's torso box; default otherwise). --count N evaluates the first N examples
(`score` then needs --allow_subset). Errors (no checkpoint, unknown split, bad stages) print a
message naming the directory or value and exit with status 1.

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


# ------------------------------------------------------------------------------------------- run

# How `run` scores a registry dataset: the benchmark of metrics.BENCHMARKS, or "lsp-labelled"
# (LSP-style PCK@0.2 over the labelled joints of examples whose torso is labelled, as the
# held-out evaluation of training does) for datasets without an official benchmark.
RUN_BENCHMARKS = {"lsp": "lsp", "lsp+lspet": "lsp", "flic": "flic", "mpii": "mpii",
                  "lspet": "lsp-labelled", "synthetic": "lsp-labelled"}


class Progress:
    """A line on stderr at most every `every` seconds: examples done, images/s, ETA. The rate is
    measured from the end of the first batch, so that compilation does not count."""

    def __init__(self, total: int, every: float = 5.0, stream=None):
        import time
        self.total, self.every, self.stream = total, every, stream or sys.stderr
        self._clock = time.perf_counter
        self.start = self._clock()
        self.first = None            # (time, done) after the first batch
        self.last_print = -1e9
        self.done = 0

    def rate(self) -> float | None:
        if self.first is None or self.done <= self.first[1]:
            return None
        return (self.done - self.first[1]) / max(self._clock() - self.first[0], 1e-9)

    def __call__(self, done: int, force: bool = False) -> None:
        self.done = done
        now = self._clock()
        if self.first is None:
            self.first = (now, done)
        if now - self.last_print < self.every and done < self.total and not force:
            return
        self.last_print = now
        rate = self.rate()
        if rate is None:
            speed = f"first batch (compiling) {now - self.start:.1f}s"
        else:
            eta = (self.total - done) / max(rate, 1e-9)
            speed = f"{rate:.1f} img/s  ETA {int(eta) // 60}m{int(eta) % 60:02d}s"
        print(f"evaluate run: {done}/{self.total} examples  {speed}", file=self.stream, flush=True)


def _stage_paths(out: str | None, workdir: str, dataset: str, split: str, stages: tuple[int, ...]) -> dict:
    """Stage -> prediction file: `out` itself for one stage, `<stem>_stage<t><ext>` for several;
    by default <workdir>/predictions/<dataset>_<split>_stage<t>.npz."""
    if out is None:
        stem, ext = os.path.join(workdir, "predictions", f"{dataset}_{split}"), ".npz"
    else:
        stem, ext = os.path.splitext(out)
        ext = ext or ".npz"
        if len(stages) == 1:
            return {stages[0]: stem + ext}
    return {t: f"{stem}_stage{t}{ext}" for t in stages}


def _mpii_head_boxes(data, split: str, index: np.ndarray) -> np.ndarray | None:
    """(N, 4) head boxes (NaN where absent) of the MPII records `index` of `split`, read with the
    reader that made the records (same people, same order); None without data.paths.mpii."""
    root = data.paths.get("mpii") if "paths" in data else None
    if not root:
        return None
    validation = data.get("mpii_validation_file") or None
    if validation and not os.path.isabs(validation) and not os.path.exists(validation) and \
            os.path.exists(os.path.join(root, validation)):
        validation = os.path.join(root, validation)
    _, chosen = mpii.select_people(mpii.find_release(root), split, validation)
    boxes = np.full((len(chosen), 4), np.nan)
    for row, person in enumerate(chosen):
        if person.head_box is not None:
            boxes[row] = person.head_box
    return boxes[index]


def score_run(dataset: str, split: str, data, pred: np.ndarray, gt: np.ndarray, visibility: np.ndarray,
              index: np.ndarray) -> tuple[dict, list[dict]]:
    """(what was measured, [metrics.score-style result per stage, fractions]) for pred
    (N, T', P, 2) against the records' gt (N, P, 2) and visibility (N, P)."""
    from cpm_jax import evaluation
    from data_pipelines import registry
    kind = RUN_BENCHMARKS.get(dataset, "lsp-labelled")
    labelled = visibility > 0
    stages = range(pred.shape[1])
    if kind == "mpii":
        boxes = _mpii_head_boxes(data, split, index)
        if boxes is not None:
            b = metrics.BENCHMARKS["mpii"]
            results = [metrics.score("mpii", pred[:, s], gt, None, labelled, boxes) for s in stages]
            return {"metric": b.metric, "threshold": b.default_threshold, "normaliser": b.normaliser,
                    "benchmark": "mpii", "note": "PCKh with the head boxes of data.paths.mpii"}, results
        kind = "lsp-labelled"
        note = ("MPII without data.paths.mpii (no head boxes): LSP-style PCK@0.2 over the annotated "
                "joints, NOT PCKh; score the prediction file with `evaluate score --dataset mpii` for PCKh")
    elif kind == "lsp-labelled":
        note = (f"{dataset} has no official benchmark: LSP-style PCK@0.2 (torso-normalised) over the "
                "labelled joints of examples whose torso is labelled")
    if kind == "lsp-labelled":
        order = registry.get(dataset).skeleton
        per_stage = evaluation.pck_per_stage({"pred": pred, "gt": gt, "visibility": visibility}, order)
        return {"metric": "PCK", "threshold": 0.2, "normaliser": metrics.BENCHMARKS["lsp"].normaliser,
                "benchmark": None, "note": note}, per_stage
    b = metrics.BENCHMARKS[kind]
    results = [metrics.score(kind, pred[:, s], gt, None, labelled) for s in stages]
    note = {"lsp": "the LSP benchmark's PCK@0.2: all 14 joints count",
            "flic": "FLIC PCK@0.2 of elbows and wrists over the annotated ones"}[kind]
    return {"metric": b.metric, "threshold": b.default_threshold, "normaliser": b.normaliser,
            "benchmark": kind, "note": note}, results


def run_split(config, workdir: str, split: str | None = None, stages: str = "all",
              options=None, count: int = 0, person: str | None = None, out: str | None = None,
              workers: int = 4, config_source: str = "", progress_every: float = 5.0) -> dict:
    """The multi-scale test-time procedure (cpm_jax/test_time.py) with the newest checkpoint of
    `workdir` over `split` (default: the config's evaluation split): writes one project prediction
    file per evaluated stage and returns the report (metrics in percent per stage, as `run --json`
    prints it). `options`: test_time.Options (its stages are replaced by `stages`); `count`: the
    first examples only (0: the whole split; an endless synthetic split: data.num_heldout);
    `person`: "image" or "annotated" (default: the dataset's rule)."""
    import time

    import jax

    from cpm_jax import configs, test_time
    from data_pipelines import pipeline, registry

    configs.validate(config, registry.DATASETS)
    data, dataset = config.data, config.data.dataset
    order = registry.get(dataset).skeleton
    split = split or pipeline.eval_split(config)
    source = registry.open_split(data, split)        # unknown split: ValueError naming the known ones
    total = count or source.size or int(data.get("num_heldout", 0))
    if source.size is not None:
        total = min(total, source.size)
    if total <= 0:
        raise ValueError(f"{dataset} {split}: nothing to evaluate (an endless split needs --count "
                         "or config.data.num_heldout)")
    chosen_stages = test_time.parse_stages(stages, config.model.num_stages)
    options = dataclasses.replace(options or test_time.Options(), stages=chosen_stages)
    rule = person or test_time.default_person_rule(dataset)
    if rule not in test_time.PERSON_RULES:
        raise ValueError(f"person rule {rule!r}; known: {', '.join(test_time.PERSON_RULES)}")
    variables, step = test_time.restore_variables(workdir, config)
    predictor = test_time.MultiScalePredictor.for_model(config, variables, options)
    size = config.model.input_size

    def loader(i):
        def load():
            record = source.load(i)
            if record is None:          # a bad example, skipped (data.skip_bad_examples)
                return None
            where = test_time.person_for_record(record, data, size, rule)
            return record["image"], where, (i, record["joints"], record["visibility"])
        return load

    print(f"evaluate run: {dataset} {split}: {total} examples, checkpoint step {step} of {workdir}, "
          f"devices {jax.devices()}", file=sys.stderr, flush=True)
    progress = Progress(total, progress_every)
    started = time.perf_counter()
    rows = list(predictor.run((loader(i) for i in range(total)), workers, progress))
    seconds = time.perf_counter() - started
    if progress.done < total:                   # skipped examples: the last line was not printed
        progress(progress.done, force=True)
    if not rows:
        raise ValueError(f"{dataset} {split}: every example was skipped as bad")
    index = np.array([r[0][0] for r in rows], np.int64)
    gt = np.stack([r[0][1] for r in rows]).astype(np.float64)
    visibility = np.stack([r[0][2] for r in rows])
    pred = np.stack([r[1] for r in rows]).astype(np.float64)       # (N, T', P, 2)
    peak = np.stack([r[2] for r in rows])                           # (N, T', P)

    scales = ",".join(f"{s:g}" for s in options.scales)
    info = {"checkpoint": f"{os.path.abspath(workdir)} step {step}", "config": config_source,
            "procedure": "multi-scale test (reference section 5)", "scales": scales,
            "flip": str(options.flip), "subpixel": str(options.subpixel), "person": rule}
    paths = _stage_paths(out, workdir, dataset, split, chosen_stages)
    for k, t in enumerate(chosen_stages):
        os.makedirs(os.path.dirname(os.path.abspath(paths[t])), exist_ok=True)
        paths[t] = prediction_files.write(paths[t], pred[:, k], dataset, split, t, index, peak[:, k],
                                          order.joint_names, **info)
    measured, results = score_run(dataset, split, data, pred, gt, visibility, index)
    return {
        "dataset": dataset, "split": split, "num_examples": int(len(index)),
        "skipped": int(total - len(index)), "workdir": workdir, "checkpoint_step": int(step),
        **measured,
        "procedure": {"scales": list(options.scales), "flip": options.flip, "subpixel": options.subpixel,
                      "person": rule, "batch_size": options.batch_size},
        "per_stage": [{"stage": t, "total": _percent(r["total"]),
                       "parts": {g: _percent(v) for g, v in r["parts"].items()},
                       "joints": {j: _percent(v) for j, v in r["joints"].items()},
                       "counted": r["counted"], "predictions": paths[t]}
                      for t, r in zip(chosen_stages, results)],
        "seconds": seconds, "images_per_second": len(index) / max(seconds, 1e-9),
        "score_with": SCORE_HINT.get(RUN_BENCHMARKS.get(dataset)),
    }


SCORE_HINT = {
    "lsp": "python -m cpm_jax.evaluate score --dataset lsp --annotations LSP/joints.mat --predictions FILE",
    "flic": "python -m cpm_jax.evaluate score --dataset flic --annotations FLIC/examples.mat --predictions FILE",
    "mpii": "python -m cpm_jax.evaluate score --dataset mpii --annotations MPII/mpii_human_pose_v1_u12_1.mat "
            "--split valid --mpii_validation detections.mat --predictions FILE",
}


def format_run_table(report: dict) -> str:
    """Figure 6c as text: the metric of every evaluated stage, by part group, and the files."""
    p = report["procedure"]
    label = f"{report['metric']}@{report['threshold']:g}"
    lines = [f"{report['dataset']} {report['split']}: {report['num_examples']} examples"
             + (f" ({report['skipped']} skipped as bad)" if report["skipped"] else "")
             + f", checkpoint step {report['checkpoint_step']} of {report['workdir']}",
             f"  test time: scales {','.join(f'{s:g}' for s in p['scales'])} x the {p['person']} "
             f"person size; flip {'on' if p['flip'] else 'off'}; sub-pixel {'on' if p['subpixel'] else 'off'}; "
             f"{report['seconds']:.1f}s, {report['images_per_second']:.1f} img/s with compilation",
             f"  {label} per stage (normaliser: {report['normaliser']}; {report['note']})", ""]
    groups = list(report["per_stage"][0]["parts"]) if report["per_stage"] else []
    lines.append(f"  {'stage':>5} " + " ".join(f"{GROUP_TITLES.get(g, g):>6}" for g in groups) + " | " + f"{'Total':>6}")
    for row in report["per_stage"]:
        lines.append(f"  {row['stage']:>5} " + " ".join(_cell(row["parts"][g]) for g in groups)
                     + " | " + _cell(row["total"]))
    lines.append("")
    for row in report["per_stage"]:
        lines.append(f"  wrote {row['predictions']}  (stage {row['stage']})")
    if report.get("score_with"):
        lines.append(f"  official score of a file: {report['score_with']}")
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


def _argv_value(argv: list[str], name: str) -> str | None:
    """The value of --name in argv (--name=v or --name v), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


# The run's config, when it comes from <workdir>/config.json: the error reading it, if any.
_SAVED_CONFIG_ERROR: list[str] = []


def _define_run_flags() -> None:
    """--config is an experiment file when given; otherwise the config the workdir was trained
    with (<workdir>/config.json, found from --workdir in sys.argv before absl parses it, so that
    --config.key=value overrides apply to either)."""
    from ml_collections import config_flags
    import ml_collections

    argv = sys.argv[2:]
    help_text = ("Experiment config file (experiments/*.py); default: the workdir's config.json, the "
                 "config the checkpoint was trained with. Override keys with --config.key=value "
                 "(e.g. --config.data.paths.lsp=/data/lsp_dataset).")
    if _argv_value(argv, "config") is not None:
        config_flags.DEFINE_config_file("config", None, help_text)
    else:
        from cpm_jax import checkpointing
        workdir = _argv_value(argv, "workdir")
        saved = ml_collections.ConfigDict()
        if workdir:
            try:
                saved = checkpointing.read_config(workdir)
            except RuntimeError as error:
                _SAVED_CONFIG_ERROR.append(str(error))
        config_flags.DEFINE_config_dict("config", saved, help_text)
    flags.DEFINE_string("workdir", None, "Training workdir: its newest checkpoint is evaluated.")
    flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split or the "
                        "dataset's evaluation split: test, valid, heldout).")
    flags.DEFINE_string("stages", "all", "Stages to evaluate: all, last, or 1-based numbers such as 1,3.")
    from cpm_jax import test_time
    test_time.define_flags()
    flags.DEFINE_enum("person", None, ["image", "annotated"], "Where to look: image (centre and 0.8 x "
                      "input / image height: the LSP rule) or annotated (the record's centre and scale). "
                      "Default: image for lsp and lsp+lspet, annotated otherwise.")
    flags.DEFINE_integer("count", 0, "Evaluate the first COUNT examples only (0: the whole split; the "
                         "endless synthetic split: config.data.num_heldout).")
    flags.DEFINE_integer("batch_size", 4, "Examples per device call (each brings one crop per scale).")
    flags.DEFINE_integer("workers", 4, "Threads that decode and crop images.")
    flags.DEFINE_string("out", None, "Prediction file (project .npz); with several stages one file per "
                        "stage, <stem>_stage<t>.npz. Default: <workdir>/predictions/<dataset>_<split>_stage<t>.npz.")
    flags.DEFINE_bool("json", False, "Print one JSON object (the last line) instead of a table.")
    flags.mark_flags_as_required(["workdir"])


def _model_mismatch(workdir: str, config) -> str | None:
    """The keys of config.model that change parameter shapes and differ from the config the
    workdir was trained with, described; None when they agree or the workdir has no config."""
    from cpm_jax import checkpointing
    try:
        saved = checkpointing.read_config(workdir).model
    except RuntimeError:
        return None
    ignored = {"dtype", "dropout_rate", "kernel_init", "output_init"}
    keys = sorted((set(saved) | set(config.model)) - ignored)
    differ = [f"model.{k}: {config.model.get(k)!r} (checkpoint: {saved.get(k)!r})" for k in keys
              if config.model.get(k) != saved.get(k)]
    return "; ".join(differ) or None


def run_main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging
    from cpm_jax import checkpointing, test_time
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
    logging.set_verbosity(logging.WARNING)
    given = _argv_value(sys.argv[2:], "config")
    try:
        if given is None and _SAVED_CONFIG_ERROR:
            raise checkpointing.NoCheckpointError(f"{_SAVED_CONFIG_ERROR[0]}; pass the experiment with --config")
        config = FLAGS.config
        if given is not None:
            mismatch = _model_mismatch(FLAGS.workdir, config)
            if mismatch:
                raise ValueError(f"--config {given} does not describe the network trained in "
                                 f"{FLAGS.workdir}: {mismatch}")
        options = test_time.Options(scales=test_time.parse_scales(FLAGS.scales), flip=FLAGS.flip,
                                    subpixel=FLAGS.subpixel, batch_size=FLAGS.batch_size)
        report = run_split(config, FLAGS.workdir, FLAGS.split, FLAGS.stages, options, FLAGS.count,
                           FLAGS.person, FLAGS.out, FLAGS.workers,
                           config_source=given or os.path.join(FLAGS.workdir, "config.json"))
    except (ValueError, OSError, RuntimeError) as error:   # NoCheckpointError, BadExampleError, ...
        print(f"evaluate run: error: {error}", file=sys.stderr)
        sys.exit(1)
    if FLAGS.json:
        print(json.dumps(report))
    else:
        print(format_run_table(report))


@dataclasses.dataclass(frozen=True)
class Subcommand:
    define_flags: Callable[[], None]
    main: Callable[[list], None]
    help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "score": Subcommand(_define_score_flags, score_main,
                        "score a prediction file against official annotations"),
    "run": Subcommand(_define_run_flags, run_main,
                      "run the multi-scale test of a workdir's checkpoint over a split: files + PCK per stage"),
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
