"""Benchmark evaluation, one subcommand per task (argv[1] selects it):

    python -m cpm_jax.evaluate score --dataset lsp|flic|mpii --annotations FILE --predictions FILE \\
        [--split S] [--threshold A] [--json] [--plot pck.png]
    python -m cpm_jax.evaluate run --workdir DIR|--pretrained NAME [--config EXPERIMENT.py] \\
        [--config.key=value] [--split S] [--stages all|last|1,3] [--scales 0.7,0.8,...,1.3] [--flip] \\
        [--subpixel] [--person image|annotated] [--count N] [--batch_size 4] [--out FILE] [--json]
    python -m cpm_jax.evaluate mean_pose --config EXPERIMENT.py [--split S] [--count N] [--json]
    python -m cpm_jax.evaluate single_person --pretrained NAME|--workdir DIR|--model FILE [--count N] [--json]

`score` scores a prediction file (prediction_files.py formats) against official annotations:
LSP PCK@0.2 (--split test: images 1001-2000, or train), FLIC PCK@0.2 of elbows and wrists (test:
the istest examples, or train), MPII PCKh@0.5 (a RELEASE file: --split valid with
--mpii_validation, or train; a one-person-per-entry annolist: --split entries). `run` evaluates a
checkpoint or shipped model with the release's multi-scale test (evaluation/multiscale.py),
writes one prediction file per stage for `score` and prints every stage's metric by part group
(the paper's figure 6c). `mean_pose` scores the baseline a model must beat. `single_person`:
how often predict's one-person warning fires on one person and on two. Each `<name>_main`
describes its options and output; errors the user can fix print one line naming the file,
directory or value, exit 1. Metrics, person rules and score commands come from each dataset's
registry record (data_pipelines/registry.py). A subcommand is a `_define_<name>_flags(argv)`
(defines its flags, returns its main) and an entry in SUBCOMMANDS.
"""
import json
import os
import sys
from typing import Callable

from absl import flags

FLAGS = flags.FLAGS
SPLIT_HELP = "lsp, flic: test (default) or train; mpii: valid, train or entries (see the module docstring)."


def _define_score_flags(argv) -> Callable:
    from cpm_jax.evaluation import ground_truth, prediction_files
    flags.DEFINE_enum("dataset", None, list(ground_truth.SPLITS), "Benchmark: lsp (PCK), flic (PCK, "
                      "elbows and wrists) or mpii (PCKh).")
    flags.DEFINE_string("annotations", None, "Official annotation file: LSP joints.mat, FLIC "
                        "examples.mat, MPII release .mat or a one-person-per-entry annolist .mat.")
    flags.DEFINE_string("predictions", None, "Prediction file (formats: cpm_jax/evaluation/prediction_files.py).")
    flags.DEFINE_float("threshold", None, "PCK threshold a (default 0.2 for lsp and flic, 0.5 for mpii).")
    flags.DEFINE_bool("json", False, "Print one JSON object (the last line) instead of a table.")
    flags.DEFINE_string("plot", None, "Write the PCK curve to this PNG.")
    flags.DEFINE_string("split", None, SPLIT_HELP)
    flags.DEFINE_enum("format", "auto", ["auto", *prediction_files.FORMATS],
                      "Prediction file format (auto: from extension and contents).")
    flags.DEFINE_string("mpii_validation", None, "mpii: Tompson et al.'s detections.mat (the "
                        "validation people; --split valid scores them, --split train leaves them out).")
    flags.DEFINE_bool("allow_subset", False, "Score a project file that covers only some examples "
                      "(its 'index' picks them).")
    flags.mark_flags_as_required(["dataset", "annotations", "predictions"])
    return score_main


def score_main(argv) -> None:
    """`score`: a prediction file against official annotations.

      lsp   `joints.mat` of LSP (3 x 14 x 2000): --split test (default: images 1001-2000) or train
            (1-1000). PCK@0.2 by default; all 14 joints count.
      flic  `examples.mat`: --split test (default: the istest examples, file order) or train
            (istrain; the file's labels, not swapped). PCK@0.2 of elbows and wrists by default.
      mpii  a .mat whose `annolist` follows the official structure, PCKh@0.5 by default:
            - the full release (`RELEASE`): --split valid with --mpii_validation (Tompson et al.'s
              detections.mat: its people, in its order) or --split train (every annotated person of
              the training images, less the validation people when --mpii_validation is given);
            - a one-person-per-entry file (a top-level `annolist`, one `annorect` per entry, fields
              as the release, e.g. the 2,958-person validation split): its entries in order
              (--split entries, the default for such a file; also forces this reading of a RELEASE).

    Output: a table, or with --json one JSON object as the last line: "total", "joints" and
    "parts" (percent; parts: head, shoulder, elbow, wrist, hip, knee, ankle, as the dataset has
    them), "curve" (totals over the default thresholds) and what was scored. --plot writes the PCK
    curve as a PNG. A file that cannot be read, an unknown format, a wrong shape, a count that does
    not match the annotations or NaN is a UserError naming the file."""
    from absl import app

    from cpm_jax.evaluation import scoring
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    report, curve = scoring.score_files(FLAGS.dataset, FLAGS.annotations, FLAGS.predictions,
                                        FLAGS.threshold, FLAGS.split, FLAGS.format, FLAGS.mpii_validation,
                                        FLAGS.allow_subset)
    if FLAGS.plot:
        from cpm_jax import visualize
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.plot)), exist_ok=True)
        visualize.pck_curve(curve, FLAGS.plot, f"{report['dataset'].upper()}: "
                            f"{os.path.basename(FLAGS.predictions)}", report["metric"])
        report["plot"] = FLAGS.plot
    if FLAGS.json:
        print(json.dumps(report))
    else:
        print(scoring.format_table(report))
        if FLAGS.plot:
            print(f"\nwrote {FLAGS.plot}")


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


def model_mismatch(workdir: str | None, config, saved: dict | None = None) -> str | None:
    """The keys of config.model that change the network and differ from the config the workdir
    (or a pretrained model: `saved`) was trained with, described; None when they agree or the
    workdir has no config."""
    from cpm_jax import errors
    from cpm_jax.training import checkpointing
    exempt = tuple(f"model.{k}" for k in ("dtype", "dropout_rate", "kernel_init", "output_init"))
    try:
        changes = checkpointing.config_changes(workdir, config, exempt, within="model.", saved=saved)
    except errors.CheckpointError:
        return None
    return "; ".join(f"{key}: {new!r} (checkpoint: {old!r})" for key, old, new in changes) or None


def run_workdir(config, workdir: str | None, split: str | None = None, stages: str = "all", options=None,
                count: int = 0, person: str | None = None, out: str | None = None, workers: int = 4,
                config_source: str = "", progress_every: float = 5.0, pretrained_name: str | None = None) -> dict:
    """The multi-scale evaluator with the newest checkpoint of `workdir` (or the shipped model
    `pretrained_name`, whose files then go to runs/pretrained/<name>/predictions by default):
    writes one project prediction file per evaluated stage and returns `scoring.run_report`
    (what `run --json` prints). `options`: multiscale.Options (its stages are replaced by `stages`)."""
    import dataclasses

    import jax

    from cpm_jax import configs, outputs, progress
    from cpm_jax.evaluation import evaluators, multiscale, prediction_files
    from cpm_jax.model import pretrained
    from cpm_jax.training import state
    from data_pipelines import registry

    configs.validate(config, registry.DATASETS, splits=(split or registry.eval_split(config.data),))
    chosen = multiscale.parse_stages(stages, config.model.num_stages)
    options = dataclasses.replace(options or multiscale.Options(), stages=chosen)
    files_root = workdir if pretrained_name is None else os.path.join(
        "runs", "pretrained", os.path.basename(pretrained.paths(pretrained_name)[0])[:-4])
    if out is None and (pretrained_name is not None or os.path.isdir(workdir)):  # before the evaluation
        outputs.check_directory(os.path.join(files_root, "predictions"), "the prediction files' directory",
                                fix="--out FILE writes them elsewhere")
    for path in ([] if out is None else _stage_paths(out, files_root, "", "", chosen).values()):
        outputs.check_file(path, "--out")
    meter = {}

    def on_progress(done, total):
        bar = meter.setdefault("bar", progress.Progress(total))
        bar.update(done)
        if bar.due(progress_every):
            print(f"evaluate run: {done}/{total} examples  {bar.describe()}", file=sys.stderr, flush=True)

    evaluator = evaluators.MultiScaleEvaluator(config, split, count, options, person, workers, on_progress)
    if pretrained_name is None:
        variables, step = state.restore_params(workdir, config)
        origin, checkpoint = workdir, f"{os.path.abspath(workdir)} step {step}"
    else:
        _, variables, record = pretrained.load(pretrained_name)
        step, origin = record["source"]["step"], f"pretrained model {pretrained_name}"
        checkpoint = f"{origin} step {step}"
    print(f"evaluate run: {config.data.dataset} {evaluator.split}: {evaluator.count} examples, checkpoint "
          f"step {step} of {origin}, devices {jax.devices()}", file=sys.stderr, flush=True)
    result = evaluator.run(variables)
    p = result.predictions
    names = registry.get(result.dataset).skeleton.joint_names
    info = {"checkpoint": checkpoint, "config": config_source,
            "procedure": "multi-scale test (docs/paper_notes.md section 5)",
            "scales": ",".join(f"{s:g}" for s in options.scales), "flip": str(options.flip),
            "subpixel": str(options.subpixel), "person": evaluator.person}
    files = _stage_paths(out, files_root, result.dataset, result.split, chosen)
    for k, t in enumerate(chosen):
        with outputs.writing(files[t]):
            os.makedirs(os.path.dirname(os.path.abspath(files[t])), exist_ok=True)
            files[t] = prediction_files.write(files[t], p.pred[:, k], result.dataset, result.split, t, p.index,
                                              p.peak[:, k], names, **info)
    procedure = {"scales": list(options.scales), "flip": options.flip, "subpixel": options.subpixel,
                 "person": evaluator.person, "batch_size": options.batch_size}
    from cpm_jax.evaluation import scoring
    return scoring.run_report(result, origin, step, procedure, files)


def missing_workdir(workdir: str) -> str | None:
    """What `run` says of a --workdir that holds no trained model at all (no such directory, or
    neither config.json nor checkpoints/ in it), with what to do; None otherwise."""
    fix = (f"check the path, train a model there first (python -m cpm_jax.train --config EXPERIMENT.py "
           f"--workdir {workdir}), or evaluate a shipped model with --pretrained NAME (pretrained/*.npz)")
    if not os.path.isdir(workdir):
        return f"--workdir {workdir}: no such directory; {fix}"
    if not any(os.path.exists(os.path.join(workdir, name)) for name in ("config.json", "checkpoints")):
        return f"--workdir {workdir}: not a training workdir (no config.json, no checkpoints/); {fix}"
    return None


def _define_run_flags(argv) -> Callable:
    """--config is an experiment file when given; otherwise the config the workdir was trained
    with (<workdir>/config.json), so that --config.key=value overrides apply to either. absl
    reads --config and --workdir first (a separate FlagValues) to know which."""
    import functools

    import ml_collections
    from ml_collections import config_flags

    from cpm_jax import errors
    from cpm_jax.evaluation import multiscale
    from cpm_jax.model import pretrained
    from cpm_jax.training import checkpointing

    early = flags.FlagValues()
    flags.DEFINE_string("config", None, "", flag_values=early)
    flags.DEFINE_string("workdir", None, "", flag_values=early)
    flags.DEFINE_string("pretrained", None, "", flag_values=early)
    early(argv, known_only=True)
    help_text = ("Experiment config file (experiments/*.py); default: the workdir's config.json, the "
                 "config the checkpoint was trained with. Override keys with --config.key=value "
                 "(e.g. --config.data.paths.lsp=/data/lsp_dataset).")
    saved_error = None
    if early.config is not None:
        config_flags.DEFINE_config_file("config", None, help_text)
    else:
        saved = ml_collections.ConfigDict()
        try:
            if early.pretrained:
                saved = ml_collections.ConfigDict(pretrained.read_info(early.pretrained)["config"])
            elif early.workdir:
                missing = missing_workdir(early.workdir)
                if missing:
                    raise errors.NoCheckpointError(missing)
                saved = checkpointing.read_config(early.workdir)
        except errors.CheckpointError as error:
            keep = early.pretrained or isinstance(error, errors.NoCheckpointError)   # missing_workdir's
            saved_error = error if keep else errors.CheckpointError(f"{error}; pass the experiment with --config")
        config_flags.DEFINE_config_dict("config", saved, help_text)
    flags.DEFINE_string("workdir", None, "Training workdir: its newest checkpoint is evaluated.")
    flags.DEFINE_string("pretrained", None, "Instead of --workdir: a model shipped in pretrained/ by name "
                        "(e.g. lspet_cpu) or the path of its .npz; its files go to runs/pretrained/<name>.")
    flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split or the "
                        "dataset's evaluation split: test, valid, heldout).")
    flags.DEFINE_string("stages", "all", "Stages to evaluate: all, last, or 1-based numbers such as 1,3.")
    multiscale.define_flags()
    flags.DEFINE_enum("person", None, ["image", "annotated"], "Where to look: image (centre and 0.8 x "
                      "input / image height: the LSP rule) or annotated (the record's centre and scale). "
                      "Default: the dataset's rule (image for lsp and lsp+lspet).")
    flags.DEFINE_integer("count", 0, "Evaluate the first COUNT examples only (0: the whole split; the "
                         "endless synthetic split: config.data.num_heldout).")
    flags.DEFINE_integer("batch_size", 4, "Examples per device call (each brings one crop per scale).")
    flags.DEFINE_integer("workers", 4, "Threads that decode and crop images.")
    flags.DEFINE_string("out", None, "Prediction file (project .npz); with several stages one file per "
                        "stage, <stem>_stage<t>.npz. Default: <workdir>/predictions/<dataset>_<split>_stage<t>.npz.")
    flags.DEFINE_bool("json", False, "Print one JSON object (the last line) instead of a table.")
    flags.mark_flags_as_mutual_exclusive(["workdir", "pretrained"], required=True)
    return functools.partial(run_main, experiment=early.config, saved_error=saved_error)


def run_main(argv, experiment: str | None = None, saved_error: Exception | None = None) -> None:
    """`run`: the multi-scale test (`evaluators.MultiScaleEvaluator`) of a workdir's newest
    checkpoint (or --pretrained) over a split (default: the config's evaluation split), with a
    progress line on stderr (examples, images/s, ETA).

    The config is the workdir's config.json by default, the one the checkpoint was trained with, so
    that the network matches; keys can be overridden as in train.py (e.g.
    --config.data.paths.lsp=/data/lsp_dataset when the data moved, or --config.data.dataset=lsp to
    test an LSP-order model on LSP). --config EXPERIMENT.py uses an experiment file instead; its
    network must be the trained one (checked: every config.model key that changes parameter
    shapes). Writes one project prediction file per evaluated stage (`_stage_paths`) and prints the
    metric of every stage by part group, or with --json one JSON object:
      lsp, lsp+lspet    LSP PCK@0.2, all 14 joints (the benchmark; `score` gives the same number);
      flic              FLIC PCK@0.2 of elbows and wrists;
      mpii              PCKh@0.5 with the head boxes the records carry;
      lspet, synthetic  no official benchmark: LSP-style PCK@0.2 over labelled joints of examples
                        whose torso is labelled (as training's held-out evaluation).
    --person image (centre and 0.8 x input / image height, the release's LSP rule; default for lsp
    and lsp+lspet) or annotated (the record's centre and scale: MPII's objpos and 1.171 / scale,
    FLIC's torso box; default otherwise). --count N evaluates the first N examples (`score` then
    needs --allow_subset)."""
    from absl import app

    from cpm_jax import errors
    from cpm_jax.evaluation import multiscale, scoring
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if saved_error is not None:
        raise saved_error
    if FLAGS.workdir and missing_workdir(FLAGS.workdir):      # with --config
        raise errors.NoCheckpointError(missing_workdir(FLAGS.workdir))
    from cpm_jax.model import pretrained
    config = FLAGS.config
    trained = pretrained.read_info(FLAGS.pretrained)["config"] if FLAGS.pretrained else None
    if experiment is not None or trained is not None:
        mismatch = model_mismatch(FLAGS.workdir, config, saved=trained)
        if mismatch:
            raise errors.ConfigError(f"--config {experiment or '(overrides)'} does not describe the network "
                                     f"trained in {FLAGS.workdir or FLAGS.pretrained}: {mismatch}")
    options = multiscale.Options(scales=multiscale.parse_scales(FLAGS.scales), flip=FLAGS.flip,
                                 subpixel=FLAGS.subpixel, batch_size=FLAGS.batch_size)
    source = experiment or (f"pretrained/{FLAGS.pretrained}.json" if FLAGS.pretrained
                            else os.path.join(FLAGS.workdir, "config.json"))
    report = run_workdir(config, FLAGS.workdir, FLAGS.split, FLAGS.stages, options, FLAGS.count,
                         FLAGS.person, FLAGS.out, FLAGS.workers, config_source=source,
                         pretrained_name=FLAGS.pretrained)
    print(json.dumps(report) if FLAGS.json else scoring.format_run_table(report))


def _define_mean_pose_flags(argv) -> Callable:
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.DEFINE_string("split", None, "Split to score (default: the config's evaluation split).")
    flags.DEFINE_integer("count", 0, "Score the first COUNT examples (0: the config's data.num_heldout, else all).")
    flags.DEFINE_bool("json", False, "Print one JSON object (the last line) instead of a table.")
    flags.mark_flags_as_required(["config"])
    return mean_pose_main


def mean_pose_main(argv) -> None:
    """`mean_pose`: the baseline a model must beat, scored the way training's evaluator scores a
    model: the mean of the training split's labelled joints in their canonical crops (crop pixels),
    placed in every canonical crop of the evaluation split and mapped back to the image
    (`evaluators.MeanPoseEvaluator`)."""
    from absl import app

    from cpm_jax import configs
    from cpm_jax.evaluation import evaluators
    from data_pipelines import registry
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    evaluator = evaluators.MeanPoseEvaluator(config, FLAGS.split, FLAGS.count)
    configs.validate(config, registry.DATASETS, splits=("train", evaluator.split))
    result = evaluator.run()
    scores = result.per_stage[0]
    report = {"dataset": result.dataset, "split": result.split, "num_examples": len(result.predictions),
              "metric": result.label, "baseline": "mean pose of the training crops",
              "total": scores["total"], "parts": scores["parts"], "seconds": result.seconds}
    if FLAGS.json:
        print(json.dumps(report))
        return
    parts = "  ".join(f"{k} {v:.3f}" for k, v in scores["parts"].items() if v is not None)
    print(f"{result.dataset} {result.split}: {len(result.predictions)} examples; mean-pose baseline "
          f"{result.label} {scores['total']:.3f}  ({parts})")


def _define_single_person_flags(argv) -> Callable:
    flags.DEFINE_string("workdir", None, "Training workdir: its newest checkpoint.")
    flags.DEFINE_string("pretrained", None, "Instead of --workdir: a model shipped in pretrained/ (e.g. lspet_cpu).")
    flags.DEFINE_string("model", None, "Instead of --workdir: an exported model (python -m cpm_jax.export).")
    flags.DEFINE_string("data_path", None, "The dataset's folder (default: the model's config.data.paths).")
    flags.DEFINE_integer("count", 0, "Judge the first COUNT photos that fit the default placement (0: all).",
                         lower_bound=0)
    flags.DEFINE_bool("json", False, "Print one JSON object (the last line) instead of a table.")
    flags.mark_flags_as_mutual_exclusive(["workdir", "pretrained", "model"], required=True)
    return single_person_main


def single_person_main(argv) -> None:
    """`single_person`: the rates of predict's single-person warning, each sign's and the
    warning's, on the evaluation split's one-person photos that the default placement fits and on
    pairs of them side by side (`single_person_rates`), with a progress line every 100 images."""
    import time

    from absl import app

    from cpm_jax import errors
    from cpm_jax.evaluation import multiscale
    from cpm_jax.inference import models, single_person_rates
    from data_pipelines import registry
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    source = models.Source(FLAGS.workdir, FLAGS.pretrained, FLAGS.model)
    data = models.open_config(source).data               # the data is checked before the model loads
    if FLAGS.data_path:
        if data.dataset not in data.paths:
            raise errors.InputError(f"--data_path {FLAGS.data_path}: dataset {data.dataset!r} reads no files")
        data.paths[data.dataset] = FLAGS.data_path
    registry.check_files(data, [registry.eval_split(data)])
    model = models.load(source)
    config = model.config
    config.data = data
    predictor = model.predictor(multiscale.Options(batch_size=1))
    started = time.perf_counter()

    def on_image(kind: str, done: int) -> None:
        if kind == "single" and done % 100 == 0:
            print(f"single_person: {done} photos and their pairs judged ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    rates = single_person_rates.measure(predictor, config, single_person_rates.fitting_photos(config, FLAGS.count),
                                        on_image)
    report = {**rates.as_dict(), "seconds": time.perf_counter() - started}
    if FLAGS.json:
        print(json.dumps(report))
        return
    for kind, label in (("single", "one person"), ("pair", "two people side by side")):
        r = rates.rates[kind]
        if r is None:
            print(f"{label}: no images")
            continue
        print(f"{label} ({rates.counts[kind]} images): warned {100 * r['warning']:.1f}%  (weak "
              f"{100 * r['weak']:.1f}%, two peaks {100 * r['two_peaks']:.1f}%, long limbs "
              f"{100 * r['long_limbs']:.1f}%; mean belief p1/p5/p25/p50 "
              + "/".join(f"{v:.2f}" for v in r["mean_belief_percentiles"].values()) + ")")


SUBCOMMANDS: dict[str, tuple[Callable, str]] = {
    "score": (_define_score_flags, "score a prediction file against official annotations"),
    "run": (_define_run_flags, "run the multi-scale test of a workdir's checkpoint over a split: files + "
                               "PCK per stage"),
    "mean_pose": (_define_mean_pose_flags, "score the mean-pose baseline (no model) the way training scores "
                                           "a model"),
    "single_person": (_define_single_person_flags, "how often predict's one-person warning fires on one "
                                                   "person and on two"),
}


def _usage() -> str:
    return ("usage: python -m cpm_jax.evaluate SUBCOMMAND [--flags]  (SUBCOMMAND --help for its flags)\n"
            + "\n".join(f"  {name:<13} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()))


def main(argv: list[str]) -> None:
    """argv[1] names the subcommand; set-up (TensorFlow unless it only scores files), then its flags are
    defined, then cli.run runs it on the rest."""
    from cpm_jax import cli, runtime
    name = argv[1] if len(argv) > 1 else None
    if name in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0)
    if name not in SUBCOMMANDS:
        print((f"unknown subcommand {name!r}\n" if name else "no subcommand\n") + _usage(), file=sys.stderr)
        sys.exit(1)
    runtime.setup(tensorflow=name in ("run", "mean_pose", "single_person"))
    rest = [f"{argv[0]} {name}", *argv[2:]]
    cli.run(SUBCOMMANDS[name][0](rest), argv=rest)


if __name__ == "__main__":
    main(sys.argv)
