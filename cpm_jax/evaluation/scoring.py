"""Scores and the tables people read: a prediction file against official annotations
(`evaluate score`), an evaluator's result per stage (`evaluate run`, the paper's Figure 6c).

Reports are dicts in PERCENT (as `--json` prints them); metrics.py works in fractions.
"""
import numpy as np

from cpm_jax import errors
from cpm_jax.evaluation import ground_truth, metrics, prediction_files
from cpm_jax.evaluation.ground_truth import GroundTruth

GROUP_TITLES = {"head": "Head", "shoulder": "Sho.", "elbow": "Elb.", "wrist": "Wri.", "hip": "Hip",
                "knee": "Knee", "ankle": "Ank."}
# How to score a prediction file of each benchmark officially (the annotation files it needs).
SCORE_COMMANDS = {
    "lsp": "python -m cpm_jax.evaluate score --dataset lsp --annotations LSP/joints.mat --predictions FILE",
    "flic": "python -m cpm_jax.evaluate score --dataset flic --annotations FLIC/examples.mat --predictions FILE",
    "mpii": "python -m cpm_jax.evaluate score --dataset mpii --annotations MPII/mpii_human_pose_v1_u12_1.mat "
            "--split valid --mpii_validation detections.mat --predictions FILE",
}
# What a metric counts, in words, for the run table.
METRIC_NOTES = {
    "lsp": "the LSP benchmark's PCK@0.2: all 14 joints count",
    "flic": "FLIC PCK@0.2 of elbows and wrists over the annotated ones",
    "mpii": "PCKh with the records' head boxes over the annotated joints",
    "labelled": "no official benchmark: LSP-style PCK@0.2 (torso-normalised) over the labelled joints "
                "of examples whose torso is labelled",
}


def match(truth: GroundTruth, predictions: prediction_files.Predictions,
          allow_subset: bool = False) -> GroundTruth:
    """The annotations' rows the predictions are for: all of them, in order (a foreign file must
    have exactly that many rows); a project file's `index` picks them, and a subset of the
    examples is an error unless `allow_subset`."""
    path, n, m = predictions.path, len(predictions), len(truth)
    if predictions.format == "project":
        split = predictions.info.get("split")
        if truth.split is not None and split != truth.split:
            raise errors.AnnotationError(f"{path}: predictions of split {split!r}, but the annotations "
                                  f"({truth.path}) are scored as split {truth.split!r}")
        index = predictions.index
        if len(np.unique(index)) != n or (n and (index.min() < 0 or index.max() >= m)):
            raise errors.AnnotationError(f"{path}: 'index' must name distinct examples 0..{m - 1} of the "
                                  f"{m} in {truth.path}")
        if n == m and np.array_equal(index, np.arange(m)):
            return truth
        if n != m and not allow_subset:
            raise errors.AnnotationError(f"{path}: predictions for {n} of the {m} examples in {truth.path}; "
                                  "score a subset only with --allow_subset")
        return truth.take(index)
    if n != m:
        raise errors.AnnotationError(f"{path}: {n} predictions, but {truth.path} has {m} examples to score "
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
    truth = ground_truth.load_annotations(benchmark, annotations, split, mpii_validation)
    truth = match(truth, read, allow_subset)
    try:
        result = score(truth, read.joints, threshold)
    except ValueError as error:      # what the readers let through and the metric rejects
        raise errors.AnnotationError(f"{predictions} against {annotations}: {error}") from error
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


def run_report(result, workdir: str, step: int, procedure: dict, files: dict) -> dict:
    """`evaluate run --json`'s object: an evaluators.Result in percent per stage, with the
    checkpoint, the test-time `procedure` and each stage's prediction file (`files`: stage -> path)."""
    n = len(result.predictions)
    return {
        "dataset": result.dataset, "split": result.split, "num_examples": n, "skipped": result.skipped,
        "workdir": workdir, "checkpoint_step": int(step),
        "metric": result.benchmark.metric, "threshold": result.threshold,
        "normaliser": result.benchmark.normaliser,
        "benchmark": result.metric if result.metric in SCORE_COMMANDS else None,
        "note": METRIC_NOTES[result.metric],
        "procedure": procedure,
        "per_stage": [{"stage": t, "total": _percent(r["total"]),
                       "parts": {g: _percent(v) for g, v in r["parts"].items()},
                       "joints": {j: _percent(v) for j, v in r["joints"].items()},
                       "counted": r["counted"], "predictions": files[t]}
                      for t, r in zip(result.stages, result.per_stage)],
        "seconds": result.seconds, "images_per_second": n / max(result.seconds, 1e-9),
        "score_with": SCORE_COMMANDS.get(result.metric),
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
