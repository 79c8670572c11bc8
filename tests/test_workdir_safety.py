"""Nothing of a run is lost or overwritten by a failure, through `python -m cpm_jax.train` as a
user runs it: a config that does not fit a workdir's checkpoints changes nothing there (with
config.json gone too); a save the checkpoint manager declines or drops is never logged as made
and ends the run (exit 1) instead of a later resume starting over; a disk that fills during a
save ends the run in one line naming the step, the intact checkpoint and the space needed, and
the same command then resumes from that checkpoint. The faults no healthy machine makes on
demand are injected (tests/train_hooks.py)."""
import re
import shutil

import jax
import numpy as np
import pytest

from cpm_jax.training import save_failures
from cpm_jax.training import state as train_states
from tests import train_cli
from tests.test_workdir import run_config
from tests.train_cli import overrides

PROGRAM = "cpm_jax.train: error: "


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return train_cli.cache_dir(tmp_path_factory)


FULL_DISK = overrides(training__num_steps=16, training__eval_every=0)      # checkpoints every 4, keep 2


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory, cache) -> dict:
    """A run whose save of checkpoint 8 meets a full disk (exit 1), what it left (steps on disk,
    temporary directories), then the same command, the space freed, to the end (16 steps): the
    full-disk test reads them all, and the config.json test starts from a copy of the workdir."""
    logs = tmp_path_factory.mktemp("full_disk")
    workdir = logs / "workdir"
    with train_cli.running(train_cli.hooked_command(workdir, "disk_full", *FULL_DISK), cache, logs, "full",
                           CPM_TEST_HOOK_ARG="8") as run:
        status = run.wait()
    left = {"steps": train_cli.steps_on_disk(workdir), "temporary": train_cli.temporary_dirs(workdir)}
    resumed = train_cli.train(workdir, *FULL_DISK, cache=cache, logs=logs, name="resumed") if status == 1 else None
    return {"workdir": workdir, "run": run, "status": status, "left": left, "resumed": resumed}


def error_line(run) -> str:
    """The run's last stderr line, checked to be its one-line error (no traceback anywhere)."""
    log = run.log()
    assert "Traceback" not in log, log[-4000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith(PROGRAM), log[-3000:]
    return last[len(PROGRAM):]


def saving_lines(log: str) -> list[int]:
    return [int(line.split("saving checkpoint ")[1].split()[0]) for line in log.splitlines()
            if "saving checkpoint " in line]


def test_a_workdir_without_config_json_is_not_changed_by_a_config_its_checkpoints_do_not_fit(tmp_path, cache,
                                                                                              full_disk):
    assert full_disk["resumed"], "the full-disk run's workdir did not come to its end"
    workdir = tmp_path / "workdir"
    shutil.copytree(full_disk["workdir"], workdir)               # a finished run: checkpoints 12 and 16
    (workdir / "config.json").unlink()
    before = train_cli.tree_digest(workdir)
    with train_cli.running(train_cli.command(workdir, *FULL_DISK, "--config.model.num_stages=3"), cache, tmp_path,
                           "three_stages") as run:
        assert run.wait() == 1, run.log()[-3000:]
    message = error_line(run)
    print(message[:300])
    assert message.startswith(f"no checkpoint of {workdir}/checkpoints can be read, and none was changed")
    assert train_cli.tree_digest(workdir) == before, "the refused run changed the workdir"
    assert not (workdir / "config.json").exists()

    resumed = train_cli.train(workdir, *overrides(training__num_steps=18, training__eval_every=0), cache=cache,
                              logs=tmp_path, name="right_config")
    assert "resumed from step 16 in" in resumed.log()
    assert train_cli.restore(workdir)[1] == 18 and '"num_stages": 2' in (workdir / "config.json").read_text()


@pytest.mark.parametrize("hook, failing_step, expected", [
    ("declined_saves", 4, "checkpoint 4 is not in {dir}: the checkpoint manager declined to save it; no "
                          "checkpoint before step 4 was kept, so the same command starts the run again"),
    ("keep_none", 2, "checkpoint 2 was written to {dir} and then removed by its manager, which keeps no checkpoint "
                     "(max_to_keep = 0; config.training.keep_checkpoints must be >= 1): no checkpoint before step 2 "
                     "was kept, so the same command starts the run again"),
])
def test_a_save_that_is_not_made_or_not_kept_is_never_reported_as_made(tmp_path, cache, hook, failing_step, expected):
    workdir = tmp_path / "workdir"
    args = overrides(training__num_steps=4, training__checkpoint_every=2, training__eval_every=0)
    with train_cli.running(train_cli.hooked_command(workdir, hook, *args), cache, tmp_path, hook,
                           CPM_TEST_HOOK_ARG="") as run:
        assert run.wait() == 1, run.log()[-3000:]
    message = error_line(run)
    print(message)
    assert message == expected.format(dir=workdir / "checkpoints")
    assert saving_lines(run.log()) == ([] if hook == "declined_saves" else [2])   # only saves Orbax made
    assert train_cli.steps_on_disk(workdir) == [] and not (workdir / "metrics.json").exists()
    assert run.stdout() == ""                                                     # no result reported


def test_a_full_disk_during_a_save_is_one_line_and_the_same_command_resumes(full_disk):
    workdir, run, left = full_disk["workdir"], full_disk["run"], full_disk["left"]
    assert full_disk["status"] == 1, run.log()[-3000:]
    message = error_line(run)
    print(message)
    state_bytes = sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize
                      for leaf in jax.tree.leaves(train_states.abstract(run_config())))
    assert message.startswith(f"cannot save checkpoint 8 in {workdir}/checkpoints: no space left on the device "
                              f"(the checkpoint needs at least {save_failures.megabytes(state_bytes)}, ")
    assert message.endswith(f"the previous checkpoint 4 ({workdir}/checkpoints/4) is intact, and the same command "
                            "continues from it")
    assert not re.findall(r"^[EW]\d{4} .*", run.log(), re.M), run.log()[-3000:]   # no Orbax error echoes
    assert left["steps"] == [4] and left["temporary"] == ["8.orbax-checkpoint-tmp"]
    assert run.log().strip().splitlines()[-1].startswith(PROGRAM)                  # the error is the last line

    resumed = full_disk["resumed"]                                                 # space freed, same command
    assert "resumed from step 4 in" in resumed.log()
    assert train_cli.steps_on_disk(workdir) == [12, 16] and train_cli.temporary_dirs(workdir) == []
    assert (workdir / "metrics.json").exists()
