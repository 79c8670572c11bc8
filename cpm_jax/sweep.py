"""Sweeps: one model per point of a grid of config values, trained, evaluated stage by stage and
tabulated side by side (the paper's Figure 6c: PCK of every stage of 1- to 6-stage models).

    python -m cpm_jax.sweep --config experiments/NAME.py --workdir DIR --stages 1,2,3,4,5,6 [--config.x=y ...]
    python -m cpm_jax.sweep ... --sweep model.input_size=96,128     # any config key; repeatable (grid)
    python -m cpm_jax.sweep ... --schemes i,ii,iii,iv                # the paper's training schemes (schemes.py)
    python -m cpm_jax.sweep ... --only K          # member K only (0-based; default $SLURM_ARRAY_TASK_ID, else all)
    python -m cpm_jax.sweep ... --collect         # train nothing: collect finished members, write the tables
    python -m cpm_jax.sweep ... --print_commands  # one `... --only K` command per member (a cluster array)

`--stages 1,2,3` is `--sweep model.num_stages=1,2,3`. The members are the product of the schemes
and every swept key, in that order (schemes, --stages, then --sweep in command-line order); each
trains with `schemes.run` in `DIR/<name>`, its name the swept values (`DIR/num_stages=3`,
`DIR/scheme=ii,num_stages=3`; a key by its last part unless two swept keys share it). Values take
the type of the key's value; before anything trains, every member's config is checked
(`configs.validate`), and a value given twice or two members of one config fail. A finished
member is skipped, an unfinished one resumes (train.py): a killed sweep goes on with the same command.

Collecting reads each member's metrics.json (train's `CropEvaluator` result: every stage), or
evaluates a member's checkpoint at its final step with the same evaluator, and writes to DIR
sweep.csv (a row per member: swept values, status, step, metric, every stage's score, fractions),
sweep.md (the same in percent, with the command) and sweep.png (final-stage score against the
swept value; every member's score by stage). Members with neither are listed as missing: the
tables are written with what exists, then the run fails (exit 1) naming them.
"""
import csv
import dataclasses
import itertools
import json
import os
import re
import shlex
import sys

import ml_collections
from absl import flags

from cpm_jax import errors, outputs

SCHEME = "scheme"               # the axis of --schemes (schemes.SCHEMES names)
STAGES = "model.num_stages"     # the axis of --stages
FILES = ("sweep.csv", "sweep.md", "sweep.png")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept key (a dotted config key, or SCHEME) and its values, parsed; `flag`: the
    command-line text that gave it ("--stages 1,2", "--sweep model.input_size=96,128")."""
    key: str
    values: tuple
    flag: str = ""


@dataclasses.dataclass(frozen=True)
class Member:
    """One point of the grid: `index` (0-based, the --only number), `name` (its sub-workdir),
    `values` {axis key: value} and its config."""
    index: int
    name: str
    values: dict
    config: ml_collections.ConfigDict


def parse_value(config: ml_collections.ConfigDict, key: str, text: str):
    """`text` as a value of `config.<key>`, with the type of its current value (bool, int, float,
    str; None: str). Raises ConfigError naming the key when the key does not exist or the text
    does not parse."""
    from cpm_jax import cli
    problem = cli.missing_key(config, key)
    if problem:
        raise errors.ConfigError(f"--sweep {key}: {problem}")
    current = config
    for part in key.split("."):
        current = current[part]
    if isinstance(current, ml_collections.ConfigDict):
        raise errors.ConfigError(f"--sweep {key}: config.{key} is a section, not a value")
    kind = type(current)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        if kind in (int, float):
            return kind(text)
        return text
    except ValueError:
        raise errors.ConfigError(f"--sweep {key}={text}: cannot parse {text!r} as config.{key}'s type, "
                                 f"{kind.__name__} (now {current!r})") from None


def parse_axis(config: ml_collections.ConfigDict, spec: str) -> Axis:
    """"model.input_size=96,128" -> Axis("model.input_size", (96, 128))."""
    key, sep, values = spec.partition("=")
    key = key.strip().removeprefix("config.")
    if not sep or not key or not values.strip():
        raise errors.ConfigError(f"--sweep {spec!r}: expected KEY=V1,V2,... (e.g. model.num_stages=1,2,3)")
    return Axis(key, tuple(parse_value(config, key, v.strip()) for v in values.split(",")))


def grid(config: ml_collections.ConfigDict, sweeps: list[str], stages: str | None,
         scheme_names: str | None) -> list[Axis]:
    """The axes: schemes, then --stages, then each --sweep, in command-line order."""
    from cpm_jax.training import schemes
    axes = []
    if scheme_names:
        names = tuple(n.strip() for n in scheme_names.split(","))
        unknown = [n for n in names if n not in schemes.SCHEMES]
        if unknown:
            raise errors.ConfigError(f"--schemes: {', '.join(unknown)} unknown; known: {', '.join(schemes.SCHEMES)}")
        axes.append(Axis(SCHEME, names, f"--schemes {scheme_names}"))
    if stages:
        axes.append(dataclasses.replace(parse_axis(config, f"{STAGES}={stages}"), flag=f"--stages {stages}"))
    axes += [dataclasses.replace(parse_axis(config, spec), flag=f"--sweep {spec}") for spec in sweeps]
    keys = [a.key for a in axes]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise errors.ConfigError(f"swept twice: {', '.join(repeated)} (give each key once)")
    for axis in axes:
        twice = next((v for i, v in enumerate(axis.values) if v in axis.values[:i]), None)
        if twice is not None:
            raise errors.ConfigError(f"{axis.flag}: {_show(twice)} given twice (give each value once: "
                                     "every value is one member)")
    if not axes:
        raise errors.InputError("nothing to sweep: give --stages, --sweep KEY=V1,V2 or --schemes")
    return axes


def labels(keys: list[str]) -> dict[str, str]:
    """{key: its label in names and tables}: the key's last part, or the whole key where two
    keys share a last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def members(config: ml_collections.ConfigDict, axes: list[Axis]) -> list[Member]:
    """Every point of the grid (the product of the axes, the last varying fastest), with its
    config: the scheme applied (schemes.apply), then the swept keys."""
    from cpm_jax.training import schemes
    names = labels([a.key for a in axes])
    out = []
    for index, point in enumerate(itertools.product(*(a.values for a in axes))):
        values = dict(zip((a.key for a in axes), point))
        member_config = config.copy_and_resolve_references()
        if SCHEME in values:
            member_config = schemes.apply(member_config, values[SCHEME])
        member_config.update_from_flattened_dict({k: v for k, v in values.items() if k != SCHEME})
        name = ",".join(f"{names[k]}={_show(v)}" for k, v in values.items())
        out.append(Member(index, name, values, member_config))
    return out


def check_distinct(sweep: list[Member], axes: list[Axis]) -> None:
    """Raises ConfigError naming the flags and both members when two members would train the same
    config (e.g. --schemes i,iv with --sweep loss.intermediate_supervision=true,false)."""
    seen = {}
    for member in sweep:
        text = json.dumps(member.config.to_dict(), sort_keys=True, default=repr)
        first = seen.setdefault(text, member)
        if first is not member:
            raise errors.ConfigError(f"{' with '.join(a.flag for a in axes)}: members {first.index} ({first.name}) "
                                     f"and {member.index} ({member.name}) would train the same config (a swept "
                                     "key that a scheme also sets?); give each grid point once")


def evaluate_checkpoint(workdir: str, step: int) -> dict | None:
    """The training evaluator (`CropEvaluator`, every stage) on the workdir's newest checkpoint,
    with the config it was trained with, as train's metrics.json (no pictures); None when there
    is no checkpoint of step `step`."""
    from cpm_jax.evaluation import evaluators
    from cpm_jax.training import checkpointing, heldout, state
    try:
        mngr, newest = checkpointing.open_latest(workdir)
        mngr.close()
        if newest != step:      # unfinished: nothing to restore
            return None
        config, variables, restored = state.restore_trained(workdir)
    except errors.CheckpointError:
        return None
    if restored != step:        # the final checkpoint was unreadable: an older one was restored
        return None
    return heldout.make_report(step, evaluators.CropEvaluator(config).run(variables), [])


def collect(member: Member, workdir: str) -> tuple[str, dict | None]:
    """(status, report) of one member: ("done", metrics.json), ("evaluated from checkpoint", its
    evaluation) or ("missing", None)."""
    from cpm_jax.training import schemes
    step = schemes.final_step(member.config)
    report = schemes.finished_report(workdir, step)
    if report is not None:
        return "done", report
    report = evaluate_checkpoint(workdir, step)
    return ("evaluated from checkpoint", report) if report is not None else ("missing", None)


def rows(sweep: list[Member], collected: list[tuple[str, dict | None]]) -> list[dict]:
    """One row per member: {"member", each swept label, "status", "step", "metric",
    "stage1" .. "stageT" (T: the most stages of any member; a member with fewer has None
    after its last), "final_stage"}; scores are fractions, None where unknown."""
    names = labels(list(sweep[0].values)) if sweep else {}
    most = max((m.config.model.num_stages for m in sweep), default=0)
    out = []
    for member, (status, report) in zip(sweep, collected):
        row = {"member": member.name, **{names[k]: _show(v) for k, v in member.values.items()},
               "status": status, "step": None, "metric": None}
        per_stage = []
        if report is not None:
            row.update(step=report["step"], metric=report["metric"])
            per_stage = report[f"{report['metric'].lower()}_per_stage"]
        row.update({f"stage{t}": per_stage[t - 1] if t <= len(per_stage) else None for t in range(1, most + 1)})
        row["final_stage"] = report["final_stage"]["total"] if report is not None else None
        out.append(row)
    return out


def write_csv(table: list[dict], path: str) -> None:
    """The rows as CSV; scores as fractions, unknown cells empty."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in row.items()} for row in table])


def markdown(table: list[dict], command: str) -> str:
    """The rows as a Markdown table (scores in percent, one decimal; "-" where unknown), after
    the command that made it."""
    metric = next((r["metric"] for r in table if r["metric"]), "score")
    header = [k for k in table[0] if k != "metric"]
    shown = {k: "final stage (%)" if k == "final_stage" else f"stage {k[5:]} (%)" if re.fullmatch(r"stage\d+", k)
             else k for k in header}

    def cell(key, value) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.1f}" if re.fullmatch(r"stage\d+|final_stage", key) else str(value)

    lines = [f"# Sweep: {metric} by stage", "", "```", command, "```", "",
             "| " + " | ".join(shown[k] for k in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(k, row[k]) for k in header) + " |" for row in table]
    return "\n".join(lines) + "\n"


def plot(table: list[dict], axes: list[Axis], path: str) -> None:
    """Left: final-stage score (%) against the swept value (model.num_stages when swept, else
    the first swept key; one line per value of the other axes, e.g. per scheme). Right: every
    member's score (%) by stage (the paper's Figure 6c). Missing members are left out."""
    import numpy as np
    from matplotlib.figure import Figure
    names = labels([a.key for a in axes])
    x_axis = next((a for a in axes if a.key == STAGES), None) or next((a for a in axes if a.key != SCHEME), axes[0])
    x_values = [_show(v) for v in x_axis.values]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x_axis.values)
    position = {s: (float(v) if numeric else i) for i, (s, v) in enumerate(zip(x_values, x_axis.values))}
    metric = next((r["metric"] for r in table if r["metric"]), "score")
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    others = [a for a in axes if a is not x_axis]
    for point in itertools.product(*(a.values for a in others)):
        key = {names[a.key]: _show(v) for a, v in zip(others, point)}
        line = [r for r in table if all(r[k] == v for k, v in key.items()) and r["final_stage"] is not None]
        label = ",".join(f"{k}={v}" for k, v in key.items()) or None
        left.plot([position[r[names[x_axis.key]]] for r in line], [100 * r["final_stage"] for r in line],
                  "o-", label=label)
    left.set_xticks(sorted(set(position.values())), [s for s, _ in sorted(position.items(), key=lambda i: i[1])])
    left.set_xlabel(names[x_axis.key])
    left.set_ylabel(f"final-stage {metric} (%)")
    for row in table:
        scores = [row[k] for k in row if re.fullmatch(r"stage\d+", k) and row[k] is not None]
        if scores:
            right.plot(np.arange(1, len(scores) + 1), 100 * np.asarray(scores), "o-", label=row["member"])
    right.set_xlabel("stage")
    right.set_ylabel(f"{metric} (%)")
    right.xaxis.get_major_locator().set_params(integer=True)
    for ax in (left, right):
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def member_commands(argv: list[str], count: int) -> list[str]:
    """`python -m cpm_jax.sweep <argv without --only, --collect, --print_commands> --only K`,
    one per member."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif re.fullmatch(r"--?only", arg):
            skip = True
        elif not re.fullmatch(r"--?(only=.*|(no)?(collect|print_commands)(=.*)?)", arg):
            kept.append(arg)
    return [shlex.join([sys.executable, "-m", "cpm_jax.sweep", *kept, "--only", str(k)]) for k in range(count)]


def chosen_member(only: int | None, count: int) -> int | None:
    """--only, else $SLURM_ARRAY_TASK_ID, else None (all); checked against the member count."""
    if only is None and os.environ.get("SLURM_ARRAY_TASK_ID", "").strip():
        text = os.environ["SLURM_ARRAY_TASK_ID"]
        try:
            only = int(text)
        except ValueError:
            raise errors.InputError(f"$SLURM_ARRAY_TASK_ID={text!r} is not a member number") from None
    if only is not None and not 0 <= only < count:
        raise errors.InputError(f"member {only}: the sweep has members 0 .. {count - 1}")
    return only


def train_member(member: Member, workdir: str, count: int) -> None:
    """Trains one member (schemes.run, resumable), or says it is finished."""
    from cpm_jax.training import schemes
    what = f"sweep: member {member.index + 1}/{count} {member.name}"
    if schemes.finished_report(workdir, schemes.final_step(member.config)) is not None:
        print(f"{what}: finished, skipped", flush=True)
        return
    print(f"{what}: training in {workdir}", flush=True)
    schemes.run(member.config, workdir)


def write_tables(sweep: list[Member], axes: list[Axis], workdir: str, command: str) -> list[str]:
    """Collects every member and writes sweep.csv, sweep.md and sweep.png; returns the names of
    the missing members."""
    collected = []
    for member in sweep:
        status, report = collect(member, os.path.join(workdir, member.name))
        print(f"sweep: member {member.index + 1}/{len(sweep)} {member.name}: {status}", flush=True)
        collected.append((status, report))
    table = rows(sweep, collected)
    csv_path, md_path, png_path = (os.path.join(workdir, f) for f in FILES)
    with outputs.writing(csv_path):
        write_csv(table, csv_path)
    with outputs.writing(md_path), open(md_path, "w") as f:
        f.write(markdown(table, command))
    with outputs.writing(png_path):
        plot(table, axes, png_path)
    print(f"sweep: wrote {csv_path}, {md_path}, {png_path}", flush=True)
    return [r["member"] for r in table if r["status"] == "missing"]


FLAGS = flags.FLAGS


def main(argv) -> None:
    from cpm_jax import configs, runtime
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    from data_pipelines import registry
    axes = grid(FLAGS.config, FLAGS.sweep or [], FLAGS.stages, FLAGS.schemes)
    sweep = members(FLAGS.config, axes)
    check_distinct(sweep, axes)
    for member in sweep:       # the whole grid, before anything trains
        try:
            configs.validate(member.config, registry.DATASETS)
        except errors.ConfigError as error:
            raise errors.ConfigError(f"member {member.index} {member.name}: {error}") from None
    if FLAGS.print_commands:
        print("\n".join(member_commands(sys.argv, len(sweep))))
        return
    outputs.check_directory(FLAGS.workdir, "--workdir")   # before anything trains
    only = None if FLAGS.collect else chosen_member(FLAGS.only, len(sweep))
    if not FLAGS.collect:
        from cpm_jax.training import preemption
        try:
            for member in sweep if only is None else [sweep[only]]:
                train_member(member, os.path.join(FLAGS.workdir, member.name), len(sweep))
        except preemption.Preempted as stop:     # asked to stop, checkpoint saved: resume with the same command
            print(stop)
            sys.exit(stop.exit_status)           # 0 after SIGTERM, 130 after Ctrl-C, as train
        if only is not None:
            print(f"sweep: member {only} done; --collect writes the tables once every member is", flush=True)
            return
    os.makedirs(FLAGS.workdir, exist_ok=True)
    missing = write_tables(sweep, axes, FLAGS.workdir, shlex.join(["python", "-m", "cpm_jax.sweep", *sys.argv[1:]]))
    if missing:
        raise errors.CheckpointError(f"{len(missing)} of {len(sweep)} members not trained in {FLAGS.workdir}: "
                                     f"{', '.join(missing)} (train them: --only K, or without --collect)")


if __name__ == "__main__":
    from ml_collections import config_flags

    from cpm_jax import cli
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.DEFINE_string("workdir", None, "Sweep directory: one sub-workdir per member, and the tables.")
    flags.DEFINE_string("stages", None, "Numbers of stages to sweep, e.g. 1,2,3,4,5,6 (--sweep model.num_stages=...).")
    flags.DEFINE_multi_string("sweep", None, "KEY=V1,V2,...: a config key and its values (repeatable: a grid).")
    flags.DEFINE_string("schemes", None, "Training schemes side by side, e.g. i,ii,iii,iv (cpm_jax/training/schemes.py).")
    flags.DEFINE_integer("only", None, "Train member K only (0-based); default $SLURM_ARRAY_TASK_ID, else all.")
    flags.DEFINE_bool("collect", False, "Train nothing: collect finished members and write the tables.")
    flags.DEFINE_bool("print_commands", False, "Print one `--only K` command per member and exit.")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
