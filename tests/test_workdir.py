"""A failing `train` never damages a workdir: a second run on a workdir another run holds, a
config that would change the run a workdir holds and an invalid config are refused (exit 1, a
message naming the holder or the keys) without changing a byte; the lock itself; which config
keys a resume may change. (`train` taking over the lock of a killed run: test_resume_kill.py.)"""
import contextlib
import json
import os
import socket

import jax
import numpy as np
import pytest

from cpm_jax import configs, errors
from cpm_jax.training import checkpointing
from cpm_jax.training import state as train_states
from tests import train_cli
from tests.conftest import tiny_config
from tests.train_cli import overrides


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return train_cli.cache_dir(tmp_path_factory)


def run_config():
    """The config `train` runs with train_cli.overrides() (the tiny experiment), as it writes it."""
    config = tiny_config()
    for key, value in train_cli.RUN.items():
        section, name = key.split(".")
        config[section][name] = value
    return configs.resolve_dtype(config, jax.default_backend())


def test_a_second_run_or_another_config_is_refused_without_touching_the_workdir(tmp_path, cache):
    """A workdir as a run leaves it mid-way (checkpoints 4 and 8, a save of 12 in progress,
    config.json), its lock held by this process (as by a running `train`: host and pid inside);
    on it at once: the same command, the command with a 3-stage model and another learning
    rate, and an invalid value."""
    workdir = tmp_path / "workdir"
    with contextlib.closing(checkpointing.manager(str(workdir), keep=2)) as mngr:
        for step in (4, 8):
            checkpointing.save(mngr, step, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                                        train_states.abstract(run_config())))
    (workdir / "checkpoints" / "12.orbax-checkpoint-tmp" / "default").mkdir(parents=True)
    checkpointing.write_config(str(workdir), run_config())
    args = overrides()
    attempts = {"second": args,
                "changed": args + ["--config.model.num_stages=3", "--config.optimizer.learning_rate=0.01",
                                   "--config.training.num_steps=50"],
                "invalid": args + ["--config.model.num_stages=0"]}
    with checkpointing.locked(str(workdir)):
        before = train_cli.tree_digest(workdir)
        runs = {name: train_cli.Run(train_cli.command(workdir, *a), cache, tmp_path, name)
                for name, a in attempts.items()}
        status = {name: run.wait() for name, run in runs.items()}
        after = train_cli.tree_digest(workdir)
    print("exit status, seconds to exit: " + ", ".join(f"{n} {status[n]}, {r.seconds:.1f} s" for n, r in runs.items()))
    assert status == {"second": 1, "changed": 1, "invalid": 1}
    assert before == after, "the workdir changed"
    assert "config.json" in before and ".lock" in before and "checkpoints/12.orbax-checkpoint-tmp/default/" in before

    second = runs["second"].log()
    assert f"is in use by another training run (host {socket.gethostname()}, pid {os.getpid()}, since " in second
    changed = runs["changed"].log()
    assert "would change 2 key(s)" in changed
    assert "config.model.num_stages: 2 in the workdir, now 3" in changed
    assert "config.optimizer.learning_rate: 0.001 in the workdir, now 0.01" in changed
    assert "training.num_steps" not in changed                 # may change: a longer run
    assert "config.model.num_stages = 0: must be an integer >= 1" in runs["invalid"].log()
    for log in (second, changed, runs["invalid"].log()):
        assert log.count("\n") < 20 and "Traceback" not in log  # a short message, not a tree diff


def test_the_lock_is_taken_over_from_a_killed_run_and_refused_while_held(tmp_path, caplog):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "since": "2025-01-01T00:00:00+00:00"}))
    with checkpointing.locked(str(tmp_path)):
        assert "taking over the lock" in caplog.text and "host elsewhere, pid 4242" in caplog.text
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        held = rf"is in use by another training run \(host .*, pid {os.getpid()}"
        with pytest.raises(errors.CheckpointError, match=held):
            with checkpointing.locked(str(tmp_path)):     # a second open file: refused as another process would be
                pass
        assert json.loads(lock.read_text()) == holder      # the refused attempt wrote nothing
    assert lock.read_text() == ""                           # released: nothing stale left
    with checkpointing.locked(str(tmp_path), process_index=3):
        assert json.loads((tmp_path / ".lock.3").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("key, value, refused", [
    ("model.num_stages", 3, True), ("model.dtype", "bfloat16", True), ("optimizer.learning_rate", 0.5, True),
    ("seed", 1, True), ("training.global_batch_size", 8, True), ("data.max_rotation", 10.0, True),
    ("loss.intermediate_supervision", False, True),
    ("training.num_steps", 99, False), ("training.checkpoint_every", 7, False), ("training.nonfinite", "skip", False),
    ("data.num_heldout", 3, False), ("model.kernel_init", "paper_normal", False),
])
def test_which_config_changes_a_resume_may_make(tmp_path, key, value, refused):
    config = tiny_config()
    checkpointing.write_config(str(tmp_path), config)
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    section, name = key.rsplit(".", 1) if "." in key else (None, key)
    (config[section] if section else config)[name] = value
    if refused:
        with pytest.raises(errors.ConfigError, match=rf"config\.{key}: .* in the workdir, now {value!r}"):
            checkpointing.check_same_run(str(tmp_path), config)
    else:
        checkpointing.check_same_run(str(tmp_path), config)


def test_a_workdir_without_checkpoints_may_start_over_with_any_config(tmp_path):
    checkpointing.write_config(str(tmp_path), tiny_config())
    checkpointing.check_same_run(str(tmp_path), tiny_config(num_stages=3))
