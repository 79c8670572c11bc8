"""Damaged checkpoints: the newest one that cannot be read (a truncated or deleted file, another
model's tree) is named and skipped, the one before restored and the bad one set aside; with none
readable, a CheckpointError names each. The best-checkpoint manager keeps the best. Real Orbax
checkpoints of the tiny model's training state, each filled with its step number."""
import contextlib
import os

import jax
import numpy as np
import pytest

from cpm_jax import errors
from cpm_jax.training import checkpointing
from cpm_jax.training import state as train_states
from tests.conftest import tiny_config


@pytest.fixture
def closing():
    """`closing(manager)` -> manager, closed after the test: an Orbax manager left to the
    garbage collector reports "Event loop is closed" from its threads."""
    opened = []

    def register(mngr):
        opened.append(mngr)
        return mngr
    yield register
    for mngr in opened:
        mngr.close()


def state_at(config, step: int):
    """The training state's tree (abstract: nothing compiled) with every leaf = step."""
    return jax.tree.map(lambda s: np.full(s.shape, step, s.dtype), train_states.abstract(config))


def workdir_with_steps(path, steps=(1, 2, 3)):
    with contextlib.closing(checkpointing.manager(str(path), keep=5)) as mngr:
        for step in steps:
            checkpointing.save(mngr, step, state_at(tiny_config(), step))
    checkpointing.write_config(str(path), tiny_config())
    return path


def data_files(step_dir):
    return [os.path.join(root, n) for root, _, names in os.walk(step_dir) for n in names if root.endswith("/d")]


def truncate(step_dir):
    for path in data_files(step_dir):
        os.truncate(path, 10)


def delete_a_file(step_dir):
    os.remove(os.path.join(step_dir, "default", "_METADATA"))


def delete_the_data(step_dir):
    for path in data_files(step_dir):
        os.remove(path)


def another_model(step_dir):
    """Step 3 replaced by a 3-stage model's state (a checkpoint of another run copied in)."""
    import shutil
    other = os.path.join(os.path.dirname(os.path.dirname(step_dir)), "other")
    with contextlib.closing(checkpointing.manager(other, keep=1)) as mngr:
        checkpointing.save(mngr, 3, state_at(tiny_config(num_stages=3), 3))
    shutil.rmtree(step_dir)
    shutil.copytree(os.path.join(other, "checkpoints", "3"), step_dir)


@pytest.mark.parametrize("damage", [truncate, delete_a_file, delete_the_data, another_model])
def test_an_unreadable_newest_checkpoint_is_named_skipped_and_set_aside(tmp_path, damage, caplog, closing):
    workdir = workdir_with_steps(tmp_path / "run")
    damage(str(workdir / "checkpoints" / "3"))
    mngr = closing(checkpointing.manager(str(workdir), keep=5))
    state, step, unreadable = checkpointing.restore_newest_readable(mngr, train_states.abstract(tiny_config()))
    assert (step, unreadable) == (2, [3])
    assert all(np.all(np.asarray(x) == 2) for x in jax.tree.leaves(state))
    assert f"checkpoint {workdir}/checkpoints/3 cannot be read (" in caplog.text
    assert len(caplog.text.splitlines()) < 10                     # a line per checkpoint, no TensorStore dumps
    checkpointing.set_aside(mngr, str(workdir), unreadable)
    assert sorted(os.listdir(workdir / "unreadable_checkpoints")) == ["3"]
    assert mngr.all_steps() == [1, 2]
    checkpointing.save(mngr, 3, state_at(tiny_config(), 3))      # the resumed run saves step 3 again
    mngr.wait_until_finished()
    params, at = train_states.restore_params(str(workdir), tiny_config())
    assert at == 3


def test_no_readable_checkpoint_is_an_error_naming_each_and_nothing_moves(tmp_path, closing):
    workdir = workdir_with_steps(tmp_path / "run", steps=(1, 2))
    for step in (1, 2):
        truncate(str(workdir / "checkpoints" / str(step)))
    before = sorted(os.listdir(workdir / "checkpoints"))
    each = (r"no checkpoint of .*checkpoints can be read, and none was changed .*: cannot restore checkpoint "
            r".*checkpoints/2: ValueError: OUT_OF_RANGE.*; cannot restore checkpoint .*checkpoints/1")
    with pytest.raises(errors.CheckpointError, match=each):
        checkpointing.restore_newest_readable(closing(checkpointing.manager(str(workdir), 5)),
                                              train_states.abstract(tiny_config()))
    assert sorted(os.listdir(workdir / "checkpoints")) == before
    with pytest.raises(errors.CheckpointError, match="checkpoints/2"):   # inference says the same
        train_states.restore_params(str(workdir), tiny_config())


def test_the_best_manager_keeps_the_highest_final_stage_metric(tmp_path, closing):
    best = closing(checkpointing.best_manager(str(tmp_path)))
    saved = [checkpointing.save_if_best(best, step, state_at(tiny_config(), step), value)
             for step, value in ((8, 0.2), (16, 0.5), (24, 0.4), (16, 0.5))]
    best.wait_until_finished()
    assert saved == [True, True, False, False]
    assert sorted(os.listdir(tmp_path / "best")) == ["16"]
