"""`python -m cpm_jax.sweep` as a user runs it: the tables of a 1- and 2-stage sweep of the tiny
experiment, resuming after SIGKILL, one member per process (--only, $SLURM_ARRAY_TASK_ID) then
--collect, --print_commands, and one-line errors for bad --sweep keys and values and for grid
points given twice."""
import csv
import os
import re
import shutil
import signal

import pytest

from cpm_jax import errors, sweep
from cpm_jax.training import schemes
from tests import train_cli
from tests.conftest import tiny_config

# The tiny experiment, 2 steps, 2 held-out examples: a member costs its compilation and a few seconds.
ARGS = ["--stages", "1,2", "--config.training.num_steps=2", "--config.data.num_heldout=2",
        "--config.training.num_visualized=1"]
MEMBERS = ["num_stages=1", "num_stages=2"]


@pytest.fixture(scope="module")
def where(tmp_path_factory):
    """(compilation cache, log directory) shared by the module's runs."""
    return train_cli.cache_dir(tmp_path_factory), tmp_path_factory.mktemp("sweep_logs")


def command(workdir, *extra: str) -> list[str]:
    return train_cli.command(workdir, *ARGS, *extra, module="cpm_jax.sweep")


def run_sweep(workdir, *extra: str, where, name: str, expect: int = 0, **env) -> train_cli.Run:
    """Runs the sweep to its end; asserts its exit status."""
    cache, logs = where
    with train_cli.running(command(workdir, *extra), cache, logs, name, **env) as run:
        rc = run.wait()
    assert rc == expect, f"{name}: exit status {rc}, expected {expect}\n{run.log()[-4000:]}"
    return run


def table(workdir) -> list[dict]:
    with open(os.path.join(workdir, "sweep.csv")) as f:
        return list(csv.DictReader(f))


def scores(rows: list[dict]) -> list[dict]:
    """The rows without their status (how a member's numbers were obtained)."""
    return [{k: v for k, v in row.items() if k != "status"} for row in rows]


def mtimes(directory) -> dict[str, int]:
    """{relative path: mtime (ns)} of every file under `directory`."""
    return {os.path.relpath(os.path.join(root, n), directory): os.stat(os.path.join(root, n)).st_mtime_ns
            for root, _, names in os.walk(directory) for n in names}


@pytest.fixture(scope="module")
def full(tmp_path_factory, where):
    """A whole sweep, uninterrupted: the reference table."""
    workdir = tmp_path_factory.mktemp("full")
    run = run_sweep(workdir, where=where, name="full")
    return workdir, run


def test_sweep_writes_a_row_per_member_with_every_stage(full):
    workdir, run = full
    rows = table(workdir)
    assert [r["member"] for r in rows] == MEMBERS
    assert [r["num_stages"] for r in rows] == ["1", "2"]
    for row, stages in zip(rows, (1, 2)):
        assert row["status"] == "done" and row["step"] == "2" and row["metric"] == "PCK@0.2"
        for t in (1, 2):
            assert (row[f"stage{t}"] != "") == (t <= stages), (t, row)
        assert row["final_stage"] == row[f"stage{stages}"]
        report = schemes.finished_report(str(workdir / row["member"]), 2)
        assert [float(row[f"stage{t}"]) for t in range(1, stages + 1)] == report["pck@0.2_per_stage"]
    markdown = (workdir / "sweep.md").read_text()
    assert "--stages 1,2" in markdown
    assert sum(line.startswith("| num_stages=") for line in markdown.splitlines()) == 2
    assert (workdir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "member 2/2 num_stages=2: training in" in run.stdout()


def test_killed_sweep_resumes_without_retraining_member_one(tmp_path, where, full):
    """Killed while training member 2, member 1 finished (the full sweep's, copied: the one-by-one
    test below checks that a member trained alone scores as in the full sweep)."""
    cache, logs = where
    shutil.copytree(full[0] / MEMBERS[0], tmp_path / MEMBERS[0])
    second = tmp_path / MEMBERS[1] / "checkpoints"
    with train_cli.running(command(tmp_path), cache, logs, "killed") as run:
        run.wait_until(second.exists, f"{second}")
        run.signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    assert "member 1/2 num_stages=1: finished, skipped" in run.stdout()
    first = mtimes(tmp_path / MEMBERS[0])
    assert "metrics.json" in first and any(p.startswith("checkpoints") for p in first)
    assert not (tmp_path / "sweep.csv").exists()
    rerun = run_sweep(tmp_path, where=where, name="resumed")
    assert "member 1/2 num_stages=1: finished, skipped" in rerun.stdout()
    assert "member 2/2 num_stages=2: training in" in rerun.stdout()
    assert mtimes(tmp_path / MEMBERS[0]) == first
    assert table(tmp_path) == table(full[0])


def test_members_one_by_one_then_collect_give_the_full_table(tmp_path, where, full):
    run_sweep(tmp_path, "--only", "0", where=where, name="only0")
    assert not (tmp_path / MEMBERS[1]).exists()
    first = mtimes(tmp_path / MEMBERS[0])
    # Member 1 not trained yet: the table says so, and the run fails naming it.
    partial = run_sweep(tmp_path, "--collect", where=where, name="collect_partial", expect=1)
    assert "num_stages=2" in partial.log().strip().splitlines()[-1]
    assert [r["status"] for r in table(tmp_path)] == ["done", "missing"]
    assert "| missing |" in (tmp_path / "sweep.md").read_text()
    # $SLURM_ARRAY_TASK_ID picks member 1 (0-based) and nothing else.
    slurm = run_sweep(tmp_path, where=where, name="slurm1", SLURM_ARRAY_TASK_ID="1")
    assert "member 2/2 num_stages=2: training in" in slurm.stdout()
    assert "member 1/2" not in slurm.stdout()
    assert mtimes(tmp_path / MEMBERS[0]) == first
    # A member without metrics.json but with its final checkpoint is evaluated from it, alike.
    (tmp_path / MEMBERS[1] / "metrics.json").unlink()
    run_sweep(tmp_path, "--collect", where=where, name="collect")
    rows = table(tmp_path)
    assert [r["status"] for r in rows] == ["done", "evaluated from checkpoint"]
    assert scores(rows) == scores(table(full[0]))
    assert not (tmp_path / MEMBERS[1] / "metrics.json").exists()


def test_print_commands_lists_one_command_per_member(tmp_path, where):
    run = run_sweep(tmp_path, "--print_commands", where=where, name="commands")
    lines = run.stdout().strip().splitlines()
    assert len(lines) == 2
    for k, line in enumerate(lines):
        assert "-m cpm_jax.sweep" in line and line.endswith(f"--only {k}") and "--print_commands" not in line
        assert "--stages 1,2" in line and "--config.training.num_steps=2" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("spec, words", [("model.num_stagez=1,2", ["model.num_stagez", "num_stages"]),
                                         ("model.num_stages=one", ["model.num_stages", "'one'", "int"])])
def test_bad_sweep_key_or_value_fails_in_one_line(tmp_path, where, spec, words):
    run = run_sweep(tmp_path, "--sweep", spec, where=where, name=f"bad_{spec}", expect=1)
    last = run.log().strip().splitlines()[-1]
    assert last.startswith("cpm_jax.sweep: error: --sweep ") and all(w in last for w in words), last
    assert "Traceback" not in run.log()
    assert os.listdir(tmp_path) == []


def test_members_are_the_grid_in_order_with_their_values_applied():
    config = tiny_config()
    axes = sweep.grid(config, ["model.input_size=32,40", "loss.intermediate_supervision=false"], "1,3", "i,ii")
    members = sweep.members(config, axes)
    assert len(members) == 2 * 2 * 2
    assert members[0].name == "scheme=i,num_stages=1,input_size=32,intermediate_supervision=false"
    assert members[5].name == "scheme=ii,num_stages=1,input_size=40,intermediate_supervision=false"
    m = members[5].config
    assert (m.model.num_stages, m.model.input_size, m.loss.intermediate_supervision) == (1, 40, False)
    assert m.training.scheme == schemes.SCHEMES["ii"]["training.scheme"]
    assert config.model.num_stages == 2          # the experiment's config is left as it was


@pytest.mark.parametrize("flags, error", [
    (["--stages", "1,1"], "--stages 1,1: 1 given twice (give each value once"),
    (["--stages", "1,2", "--sweep", "model.input_size=32,0032"], "--sweep model.input_size=32,0032: 32 given twice"),
    (["--schemes", "i,ii,i"], "--schemes i,ii,i: i given twice"),
    (["--schemes", "i,iv", "--sweep", "loss.intermediate_supervision=true,false"],
     "--schemes i,iv with --sweep loss.intermediate_supervision=true,false: members 0 "
     "(scheme=i,intermediate_supervision=true) and 2 (scheme=iv,intermediate_supervision=true) would train "
     "the same config"),
])
def test_a_grid_point_given_twice_fails_before_anything_trains(tmp_path, where, flags, error):
    cache, logs = where
    args = train_cli.command(tmp_path, *ARGS[2:], *flags, module="cpm_jax.sweep")
    with train_cli.running(args, cache, logs, f"twice_{'_'.join(flags)}") as run:
        assert run.wait() == 1, run.log()[-3000:]
    last = run.log().strip().splitlines()[-1]
    assert last.startswith(f"cpm_jax.sweep: error: {error}"), last
    assert "Traceback" not in run.log() and "training in" not in run.stdout()
    assert run.seconds < 30, run.seconds
    assert os.listdir(tmp_path) == []


def test_values_that_parse_alike_are_the_same_grid_point():
    config = tiny_config()
    for spec in ("data.flip_probability=0.5,0.50", "training.num_steps=3,+3", "loss.intermediate_supervision=true,1"):
        with pytest.raises(errors.ConfigError, match=rf"^--sweep {re.escape(spec)}: .* given twice"):
            sweep.grid(config, [spec], None, None)
    axes = sweep.grid(config, ["training.scheme=joint,stagewise"], None, "i,ii")
    with pytest.raises(errors.ConfigError, match=r"^--schemes i,ii with --sweep training.scheme=joint,stagewise: "
                                                 r"members 0 \(scheme=i,training.scheme=joint\) and 2 "):
        sweep.check_distinct(sweep.members(config, axes), axes)
    axes = sweep.grid(config, ["model.input_size=32,40"], "1,2", "i,ii")
    sweep.check_distinct(sweep.members(config, axes), axes)      # 8 different configs
