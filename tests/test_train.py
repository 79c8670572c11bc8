"""Training: the pmapped step, loss falling, an in-process resume with dropout and the release's
solver, config errors, the command line. (Resuming after kills and preemption, through the
command line: test_resume_kill.py; damaged checkpoints: test_checkpoints.py.)"""
import json
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from cpm_jax import configs
from cpm_jax.benchmarks import timing
from cpm_jax.training import checkpointing, trainer
from cpm_jax.training import state as train_states
from cpm_jax.training import step as step_lib
from data_pipelines import pipeline, registry
from tests.conftest import ROOT, python_env, tiny_config


def _pmapped_step(config):
    import functools
    return jax.pmap(functools.partial(step_lib.train_step, intermediate_supervision=True), axis_name="batch")


def test_loss_falls_on_a_short_run():
    config = tiny_config()
    config.training.global_batch_size = 8
    state = train_states.create(config, jax.random.key(0))
    step = _pmapped_step(config)
    p_state, rng = flax.jax_utils.replicate(state), flax.jax_utils.replicate(jax.random.key(1))
    batches = pipeline.train_batches(config, 1)
    losses = []
    for _ in range(40):
        p_state, metrics = step(p_state, next(batches), rng)
        losses.append(float(metrics["loss"][0]))
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses  # batch-to-batch noise is ~3%
    assert np.asarray(metrics["stage_losses"]).shape == (1, 2)


def _compilations_per_step(replicate, steps: int = 3) -> list[int]:
    """XLA compilations during each of `steps` calls of `train`'s step, the state and key placed
    by `replicate` and then, as `train` runs it, each step fed the previous one's state."""
    config = tiny_config()
    step = step_lib.parallel_train_step(config)
    p_state = replicate(train_states.create(config, jax.random.key(0)))
    rng = replicate(jax.random.key(1))
    batches = pipeline.train_batches(config, 1)
    counts = []
    try:
        for _ in range(steps):
            with timing.compilations() as seconds:
                p_state, metrics = step(p_state, next(batches), rng)
                jax.block_until_ready(metrics)
            counts.append(len(seconds))
    finally:
        batches.close()
    return counts


def test_train_step_compiles_once():
    """A state placed by `train.replicate` matches the step's outputs: the second step does not
    compile again (flax's default placement did, a second compilation as long as the first)."""
    counts = _compilations_per_step(step_lib.replicate)
    assert counts[0] >= 1 and counts[1:] == [0, 0], counts
    assert _compilations_per_step(flax.jax_utils.replicate)[1] >= 1  # what the test guards against


PMAP_SCRIPT = r"""
import functools, json, sys
import flax, jax, numpy as np
sys.path.insert(0, sys.argv[1])
from cpm_jax import runtime
from cpm_jax.training import step as step_lib
from cpm_jax.training import trainer
from cpm_jax.training import state as train_states
runtime.setup()
from data_pipelines import pipeline
from tests.conftest import tiny_config
assert jax.local_device_count() == 2, jax.devices()
from cpm_jax import configs
config = tiny_config(num_stages=2)
config.training.global_batch_size = 4
config.optimizer = configs.paper_optimizer()  # the release's SGD, with a visible learning rate
config.optimizer.learning_rate = 1e-2
state = train_states.create(config, jax.random.key(0))
batch = next(pipeline.train_batches(config, 1))           # (1, 4, ...)
step = functools.partial(step_lib.train_step, intermediate_supervision=True)
out = {}
for devices in (1, 2):
    p = jax.pmap(step, axis_name="batch", devices=jax.devices()[:devices])
    shaped = {k: v.reshape((devices, -1) + v.shape[2:]) for k, v in batch.items()}
    replicated = flax.jax_utils.replicate(state, jax.devices()[:devices])
    rng = flax.jax_utils.replicate(jax.random.key(1), jax.devices()[:devices])
    new_state, metrics = p(replicated, shaped, rng)
    new_state = flax.jax_utils.unreplicate(new_state)
    out[devices] = (jax.tree.map(np.asarray, new_state.params), float(metrics["loss"][0]))
diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), out[1][0], out[2][0]))
moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), out[1][0],
                                     jax.tree.map(np.asarray, state.params)))
print(json.dumps({"max_param_diff": max(diffs), "max_update": max(moved), "loss1": out[1][1], "loss2": out[2][1]}))
"""


def test_two_device_pmap_step_equals_one_device_step():
    result = subprocess.run([sys.executable, "-c", PMAP_SCRIPT, str(ROOT)], capture_output=True, text=True,
                            env=python_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["max_update"] > 1e-5                 # the step really changed the parameters
    assert r["max_param_diff"] < 1e-6 * max(1.0, r["max_update"] * 100)
    assert r["loss1"] == pytest.approx(r["loss2"], rel=1e-5)


def _sgd_dropout_config():
    """The tiny model with dropout on and the release's solver (momentum, weight decay,
    multipliers, a step decay that falls after the resume point)."""
    config = tiny_config(dropout_rate=0.5)
    config.optimizer = configs.paper_optimizer()
    config.optimizer.learning_rate = 1e-2     # visible updates
    config.optimizer.decay_every = 3
    config.training.num_steps = 5
    config.training.checkpoint_every = 2      # checkpoints 2, 4, 5
    config.training.keep_checkpoints = 3
    config.data.num_heldout = 2
    config.training.num_visualized = 1
    return config


def _restore(workdir):
    """(state, step) of the newest checkpoint, restored into `state.abstract` (nothing compiled)."""
    config = checkpointing.read_config(str(workdir))
    return checkpointing.restore_latest(checkpointing.manager(str(workdir), 3), train_states.abstract(config))


def test_resume_with_dropout_and_caffe_sgd_is_bit_identical(tmp_path):
    """5 steps straight vs the same run stopped after its step-2 checkpoint (later checkpoints
    removed, as if it had been killed) and resumed to 5 in the same workdir."""
    import shutil
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    trainer.train_and_evaluate(_sgd_dropout_config(), str(straight))
    shutil.copytree(straight, resumed)
    for step in ("4", "5"):
        shutil.rmtree(resumed / "checkpoints" / step)
    at_2, step = _restore(resumed)
    assert step == 2
    trainer.train_and_evaluate(_sgd_dropout_config(), str(resumed))
    a, step_a = _restore(straight)
    b, step_b = _restore(resumed)
    assert step_a == step_b == 5
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)   # momentum, schedule count
    moved = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(at_2.params)))
    assert moved > 1e-4, "steps 3-5 must have changed the parameters"


@pytest.mark.parametrize("key, value, message", [
    ("model.num_stages", 0, r"config.model.num_stages = 0: must be an integer >= 1"),
    ("model.input_size", 100, r"config.model.input_size = 100: must be a positive multiple of 8"),
    ("data.dataset", "imagenet", r"config.data.dataset = 'imagenet': unknown dataset; known: .*synthetic"),
    ("model.dropout_rate", 1.0, r"config.model.dropout_rate = 1.0"),
    ("model.num_parts", 9, r"config.model.num_parts = 9: dataset 'synthetic' has 14 parts"),
    ("model.kernel_init", "xavier", r"config.model.kernel_init = 'xavier': unknown; known: paper_normal"),
    ("data.scale_range", (1.3, 0.7), r"config.data.scale_range"),
])
def test_bad_config_values_fail_clearly(key, value, message):
    config = tiny_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        configs.validate(config, registry.DATASETS)


def test_cli_trains_writes_metrics_and_pictures_and_rejects_bad_flags(tmp_path):
    args = [sys.executable, "-m", "cpm_jax.train", "--config", str(ROOT / "tests" / "tiny_experiment.py"),
            "--workdir", str(tmp_path)]
    result = subprocess.run(args, capture_output=True, text=True, env=python_env(), timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out PCK@0.2 per stage" in result.stdout
    assert "step 3/3" in result.stderr and "img/s" in result.stderr and "ETA" in result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["pck@0.2_per_stage"]) == 2 and metrics["num_examples"] == 6
    for name in ("skeletons.png", "beliefs_by_stage.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(args + ["--config.model.num_stages=0"], capture_output=True, text=True,
                         env=python_env(), timeout=300, cwd=ROOT)
    assert bad.returncode != 0 and "config.model.num_stages = 0" in bad.stderr
