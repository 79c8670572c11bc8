"""A stop signal ends `python -m cpm_jax.train` cleanly wherever it arrives, as a user sees it:
Ctrl-C (SIGINT) is a preemption that exits 130 (the step finished and saved, one line, no
traceback); a second Ctrl-C stops at once, still without a traceback and with the lock released;
SIGTERM or Ctrl-C during a held-out evaluation or the final evaluation abandons it (its step is
saved) with one line naming the step and the checkpoint, and the same command evaluates that
step again and goes on. (SIGTERM during training: test_resume_kill.py.) Evaluations and saves
are slowed down by tests/train_hooks.py so that a signal can land in them."""
import signal
import time

import pytest

from tests import train_cli
from tests.train_cli import last_logged_step, overrides

EXIT_S = 60          # from the signal to the exit: a step, a save and the interpreter's exit


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return train_cli.cache_dir(tmp_path_factory)


def stop(run, number: int, when, what: str) -> int:
    """Sends signal `number` once `when(log)` holds; the exit status (within EXIT_S of the signal)."""
    run.wait_until(lambda: when(run.log()), what)
    run.signal(number)
    sent = time.monotonic()
    status = run.wait()
    print(f"{what}: signal {number}, exit {status} after {time.monotonic() - sent:.1f} s")
    assert time.monotonic() - sent < EXIT_S
    return status


def check_clean(run, workdir) -> None:
    """No traceback, no echo of a dropped exception, and the lock released."""
    log = run.log()
    assert "Traceback" not in log and "Exception ignored" not in log, log[-4000:]
    assert (workdir / ".lock").read_text() == ""


def test_ctrl_c_saves_the_finished_step_and_exits_130_and_a_second_one_stops_at_once(tmp_path, cache):
    once, twice = tmp_path / "once", tmp_path / "twice"
    args = overrides(training__num_steps=1000, training__checkpoint_every=1000, training__eval_every=0)
    with train_cli.running(train_cli.command(once, *args), cache, tmp_path, "once") as first, \
            train_cli.running(train_cli.hooked_command(twice, "slow_saves", *args), cache, tmp_path, "twice",
                              CPM_TEST_HOOK_ARG="120") as second:
        assert stop(first, signal.SIGINT, lambda log: last_logged_step(log) >= 3, "step 3") == 130
        second.wait_until(lambda: last_logged_step(second.log()) >= 3, "step 3")
        second.signal(signal.SIGINT)               # the step finishes, then its save takes 120 s
        assert stop(second, signal.SIGINT, lambda log: "SIGINT received" in log and "test hook: saving step" in log,
                    "the slow save") == 130
    step = train_cli.steps_on_disk(once)[-1]
    assert train_cli.steps_on_disk(once) == [step] and step >= 3
    assert f"SIGINT received during step {step}: finishing it, then saving a checkpoint and exiting" in first.log()
    assert first.stdout() == (f"interrupted (Ctrl-C) at step {step}: checkpoint saved in {once}/checkpoints/{step}; "
                              "run the same command to continue\n")
    check_clean(first, once)
    assert "SIGINT received again: stopping at once" in second.log()
    assert second.stdout() == ("interrupted (Ctrl-C): stopped at once, nothing more saved; the same command "
                               f"continues from the newest checkpoint in {twice}, if any\n")
    assert train_cli.steps_on_disk(twice) == []
    check_clean(second, twice)


def test_a_signal_during_an_evaluation_abandons_it_and_the_same_command_evaluates_that_step(tmp_path, cache):
    middle, final = tmp_path / "middle", tmp_path / "final"
    middle_args = overrides(training__num_steps=12, training__checkpoint_every=5, training__eval_every=8)
    final_args = overrides(training__num_steps=4, training__checkpoint_every=2, training__eval_every=0)
    slow = dict(cache=cache, logs=tmp_path, CPM_TEST_HOOK_ARG="120")         # every evaluation takes 2 minutes
    with train_cli.running(train_cli.hooked_command(middle, "slow_evaluation", *middle_args), name="middle",
                           **slow) as a, \
            train_cli.running(train_cli.hooked_command(final, "slow_evaluation", *final_args), name="final",
                              **slow) as b:
        assert stop(a, signal.SIGINT, lambda log: "step 8: held-out evaluation" in log, "step 8's evaluation") == 130
        assert stop(b, signal.SIGTERM, lambda log: "step 4: held-out evaluation" in log, "the final evaluation") == 0
    assert a.stdout() == (f"interrupted (Ctrl-C) at step 8 during its held-out evaluation (abandoned): checkpoint "
                          f"saved in {middle}/checkpoints/8; run the same command to continue (it evaluates step 8 "
                          "first)\n")
    assert train_cli.steps_on_disk(middle) == [5, 8]          # 8 saved for the stop: not a multiple of 5
    assert b.stdout() == (f"preempted at step 4 during the final evaluation (abandoned): checkpoint saved in "
                          f"{final}/checkpoints/4; run the same command to evaluate it and write metrics.json\n")
    assert train_cli.steps_on_disk(final) == [2, 4] and not (final / "metrics.json").exists()
    for run, workdir in ((a, middle), (b, final)):
        check_clean(run, workdir)

    quick = dict(cache=cache, logs=tmp_path, CPM_TEST_HOOK_ARG="0")
    with train_cli.running(train_cli.hooked_command(middle, "slow_evaluation", *middle_args), name="middle2",
                           **quick) as a, \
            train_cli.running(train_cli.hooked_command(final, "slow_evaluation", *final_args), name="final2",
                              **quick) as b:
        assert a.wait() == 0 and b.wait() == 0, (a.log()[-3000:], b.log()[-3000:])
    log = a.log()
    assert "resumed from step 8" in log and log.index("step 8: held-out evaluation") < log.index("step 9/12")
    assert [row.split(",")[0] for row in (middle / "heldout.jsonl").read_text().splitlines()] == [
        '{"step": 8', '{"step": 12']
    assert "resumed from step 4" in b.log() and "step 1/" not in b.log() and (final / "metrics.json").exists()
    assert b.stdout().startswith("held-out PCK@0.2 per stage")
