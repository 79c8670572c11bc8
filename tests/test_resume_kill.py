"""Runs killed or preempted at any moment continue, with the same command, to parameters
bit-identical to an uninterrupted run; the uninterrupted run's TensorBoard events and best
checkpoint. Everything through `python -m cpm_jax.train` (tests/train_cli.py).

The run: train_cli.RUN (the tiny CPM with dropout, 24 steps, checkpoints every 4, evaluation
every 8); the interrupted one checkpoints every 10 steps instead (the same parameters).
"""
import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from cpm_jax.training import optimizers
from tests import train_cli
from tests.conftest import tiny_config
from tests.train_cli import STEPS, last_logged_step, overrides


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return train_cli.cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """The uninterrupted run's workdir."""
    logs = tmp_path_factory.mktemp("reference_logs")
    workdir = logs / "workdir"
    train_cli.train(workdir, *overrides(), cache=cache, logs=logs, name="reference")
    return workdir


def saving_steps(log: str) -> list[int]:
    return [int(line.split("saving checkpoint ")[1].split()[0]) for line in log.splitlines()
            if "saving checkpoint " in line]


def test_runs_stopped_or_killed_at_any_moment_resume_to_bit_identical_parameters(reference, tmp_path, cache):
    """One run, with checkpoints every 10 steps (so that the step saved on SIGTERM is no multiple),
    stopped in turn: SIGKILL (1) as its first checkpoint completes; (2) SIGTERM: the step finishes,
    is saved, exit 0; SIGKILL (3) the moment a checkpoint's temporary directory appears, (4) mid-way
    between checkpoints; then (5) the newest complete checkpoint is damaged; (6) the same command
    runs to the end from the checkpoint SIGTERM saved."""
    workdir, args = tmp_path / "workdir", overrides(training__checkpoint_every=10)

    def being_written(run) -> list[int]:
        """Steps this run is saving: logged as saved, their temporary directory there. (Orbax
        names it `<step>.orbax-checkpoint-tmp`, as a killed run may have left it; the first save
        waits for the leftovers' removal.)"""
        temporary = train_cli.temporary_dirs(workdir)
        return [n for n in saving_steps(run.log()) if f"{n}.orbax-checkpoint-tmp" in temporary]

    scenarios = [("first checkpoint complete", lambda run: train_cli.steps_on_disk(workdir), signal.SIGKILL),
                 ("a step after the resumed one done", lambda run: last_logged_step(run.log()) > expected_resume,
                  signal.SIGTERM),
                 ("a checkpoint being written", being_written, signal.SIGKILL),
                 ("checkpoint 20 complete and step 22 done (checkpoints at 20 and 24)",
                  lambda run: 20 in train_cli.steps_on_disk(workdir) and last_logged_step(run.log()) >= 22,
                  signal.SIGKILL)]
    expected_resume, killed_before = 0, False
    for i, (moment, condition, number) in enumerate(scenarios, 1):
        with train_cli.running(train_cli.command(workdir, *args), cache, tmp_path, f"run{i}") as run:
            run.wait_until(lambda: condition(run), moment, poll=0.001)
            run.signal(number)
            status = run.wait()
        log, complete = run.log(), train_cli.steps_on_disk(workdir)
        print(f"run {i}: signal {number} at {moment!r} after step {last_logged_step(log)}, exit {status}; complete "
              f"checkpoints {complete}, temporary {train_cli.temporary_dirs(workdir)}")
        if i > 1:
            assert f"resumed from step {expected_resume} in" in log
            assert ("taking over the lock" in log) == killed_before      # left by a killed run before
        if number == signal.SIGTERM:
            assert status == 0, log[-3000:]
            step = complete[-1]
            assert step % 10 and step > expected_resume and complete == [expected_resume, step]
            assert f"SIGTERM received during step {step}" in log
            assert f"preempted: stopped after step {step}" in log
            assert f"preempted at step {step}: checkpoint saved in {workdir}/checkpoints/{step}" in run.stdout()
            assert not (workdir / "metrics.json").exists()            # no final evaluation: it was asked to stop
        else:
            assert status == -signal.SIGKILL
            assert complete and complete[-1] <= last_logged_step(log)
        if i == 3:
            assert being_written(run) and being_written(run)[-1] not in complete, "the kill should hit a save"
        if i == 4:
            assert complete[-1] < last_logged_step(log)     # killed between checkpoints: work lost
        expected_resume, killed_before = complete[-1], number == signal.SIGKILL

    previous, damaged = train_cli.steps_on_disk(workdir)[-2:]
    assert previous == step                                          # SIGTERM's checkpoint
    for root, _, files in os.walk(workdir / "checkpoints" / str(damaged)):
        for name in files:
            if root.endswith("/d"):                          # the array data files
                os.truncate(os.path.join(root, name), 10)
    final = train_cli.train(workdir, *args, cache=cache, logs=tmp_path, name="run5")
    log = final.log()
    fallback = train_cli.steps_on_disk(workdir, "unreadable_checkpoints")
    assert f"checkpoint {workdir}/checkpoints/{damaged} cannot be read" in log and fallback == [damaged]
    assert f"resumed from step {previous} in" in log
    assert not train_cli.temporary_dirs(workdir)              # the killed save's leftovers are gone
    assert (workdir / ".lock").read_text() == ""              # released at the end

    a, step_a = train_cli.restore(reference)
    b, step_b = train_cli.restore(workdir)
    print(f"max |difference| to the uninterrupted run after {STEPS} steps: {train_cli.max_difference(a, b)}")
    assert step_a == step_b == STEPS
    train_cli.assert_identical(a, b)


def read_events(directory) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every event file in `directory`."""
    out = {}
    for name in sorted(os.listdir(directory)):
        for record in tf.data.TFRecordDataset(os.path.join(directory, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                out.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return out


def test_tensorboard_has_losses_rate_gradient_norms_and_held_out_scores_and_best_is_kept(reference):
    events = read_events(reference / "tensorboard")
    norm_tags = [f"train/grad_norm/stage{t}_{end}" for t in (1, 2) for end in ("first", "last")]
    train_tags = ["train/loss", "train/loss_stage1", "train/loss_stage2", "train/learning_rate",
                  "train/skipped_steps"] + norm_tags
    for tag in train_tags:
        assert sorted(events[tag]) == list(range(1, STEPS + 1)), tag
    assert sorted(events["train/images_per_second"]) == list(range(2, STEPS + 1))   # from the 2nd step
    for t in (1, 2):
        assert sorted(events[f"eval/PCK@0.2/stage{t}"]) == [8, 16, 24]
    schedule = optimizers.schedule(tiny_config().optimizer)
    for step, rate in events["train/learning_rate"].items():
        assert rate == pytest.approx(float(schedule(step - 1)), rel=1e-6)
    norms = np.array([list(events[tag].values()) for tag in norm_tags])
    assert np.all(np.isfinite(norms)) and np.all(norms > 0)
    assert set(events["train/skipped_steps"].values()) == {0.0}

    # The same scores, one line per evaluation, in heldout.jsonl, drawn in learning_curve.png.
    rows = [json.loads(line) for line in (reference / "heldout.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [8, 16, 24]
    for r in rows:
        assert r["metric"] == "PCK@0.2" and len(r["parts_per_stage"]) == 2
        assert r["per_stage"] == [pytest.approx(events[f"eval/PCK@0.2/stage{t}"][r["step"]]) for t in (1, 2)]
    assert (reference / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    final_stage = events["eval/PCK@0.2/stage2"]
    best = max(final_stage, key=lambda s: (final_stage[s], -s))     # the first of the best
    assert train_cli.steps_on_disk(reference, "best") == [best]
    state, step = train_cli.restore(reference, sub="best")
    assert step == int(state.step) == best
    assert train_cli.steps_on_disk(reference) == [20, 24]       # the latest ones are kept for resuming

