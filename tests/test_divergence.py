"""A non-finite loss or gradient: never applied; the run stops naming the step and the stage
(exit 1, the newest checkpoint the last good one), or with training.nonfinite = "skip" goes on
without that update. Through the command line, with one batch poisoned: its center map is NaN,
which only stages >= 2 read, so stage 1's loss stays finite and stage 2's does not."""
import jax
import numpy as np
import pytest

from cpm_jax.model import cpm
from cpm_jax.training import state as train_states
from cpm_jax.training import step as step_lib
from tests import train_cli
from tests.conftest import tiny_config
from tests.train_cli import overrides

# `python -m cpm_jax.train` with the batch of step POISON_STEP (counted from 1, as the log)
# given a NaN center map.
POISONED_TRAIN = r"""
import os, runpy, sys
import numpy as np
from data_pipelines import pipeline

POISON_STEP = int(os.environ["POISON_STEP"])
real_train_batches = pipeline.train_batches


class Poisoned:
    def __init__(self, batches, start_step):
        self.batches, self.step = batches, start_step

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        self.step += 1
        if self.step == POISON_STEP:
            batch = dict(batch, center_map=np.full_like(batch["center_map"], np.nan))
        return batch

    def close(self):
        self.batches.close()


def train_batches(config, num_devices, start_step=0, shard=(0, 1)):
    return Poisoned(real_train_batches(config, num_devices, start_step, shard), start_step)


pipeline.train_batches = train_batches
sys.argv[0] = "cpm_jax.train"
runpy.run_module("cpm_jax.train", run_name="__main__", alter_sys=True)
"""


def poisoned_command(workdir, *args) -> list[str]:
    return train_cli.command(workdir, *args)[:1] + ["-c", POISONED_TRAIN] + train_cli.command(workdir, *args)[3:]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return train_cli.cache_dir(tmp_path_factory)


def test_nonfinite_step_stops_naming_step_and_stage_then_skip_goes_on(tmp_path, cache):
    workdir = tmp_path / "workdir"
    args = overrides(training__num_steps=5, training__checkpoint_every=1, training__keep_checkpoints=10,
                     training__eval_every=0)
    with train_cli.running(poisoned_command(workdir, *args), cache, tmp_path, "stop", POISON_STEP="3") as run:
        assert run.wait() == 1
    message = run.log().strip().splitlines()[-1]
    print(f"stopped in {run.seconds:.1f} s: {message}")
    assert message.startswith("cpm_jax.train: error: step 3: the loss of stage 2 is not finite (loss per stage: ")
    assert f"the newest checkpoint is step 2 in {workdir}/checkpoints" in message
    assert "training.nonfinite = 'skip'" in message
    assert train_cli.steps_on_disk(workdir) == [1, 2]             # nothing of step 3 saved

    with train_cli.running(poisoned_command(workdir, *args, "--config.training.nonfinite=skip"), cache,
                           tmp_path, "skip", POISON_STEP="3") as run:
        assert run.wait() == 0, run.log()[-3000:]
    log = run.log()
    assert "resumed from step 2 in" in log
    assert "skipped step 3: the loss of stage 2 is not finite" in log
    assert "1 step(s) of this run were skipped as non-finite" in log
    assert train_cli.steps_on_disk(workdir) == [1, 2, 3, 4, 5]
    (s2, _), (s3, _), (s4, _) = (train_cli.restore(workdir, step) for step in (2, 3, 4))
    assert int(s3.step) == 3                                     # the step counts, its update does not
    train_cli.assert_identical(s2.replace(step=s3.step), s3)     # parameters and optimiser state as at 2
    assert train_cli.max_difference(s3, s4) > 0                  # step 4 trained again
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(s4.params))


def test_the_message_names_the_stages_whose_gradient_is_not_finite():
    metrics = {"loss": 3.0, "stage_losses": np.array([1.0, 2.0]), "grads_finite": np.array([False, True])}
    assert step_lib.describe_nonfinite(7, metrics) == ("step 7: the gradient of stage 1 is not finite (every stage's "
                                                    "loss is finite) (loss per stage: 1 2)")
    metrics["stage_losses"] = np.array([np.inf, np.nan])
    assert step_lib.describe_nonfinite(7, metrics).startswith("step 7: the loss of stages 1, 2 is not finite")


def test_first_and_last_convolution_of_every_stage():
    params = train_states.abstract(tiny_config(num_stages=3)).params
    convs = cpm.first_and_last_convs(params)
    assert convs == {
        "stage1_first": ("stage1", "layers", "conv1", "kernel"), "stage1_last": ("stage1", "layers", "conv7", "kernel"),
        "stage2_first": ("trunk", "layers", "conv1", "kernel"), "stage2_last": ("stage2", "head", "conv5", "kernel"),
        "stage3_first": ("stage3", "features", "conv1", "kernel"), "stage3_last": ("stage3", "head", "conv5", "kernel"),
    }
