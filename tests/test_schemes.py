"""The paper's training schemes (schemes.py): stage-wise freezing, initialisation from another
workdir, each ablation end to end, resume, and the config errors."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import optax
import pytest

from cpm_jax import configs, errors
from cpm_jax.model import architecture
from cpm_jax.training import checkpointing, optimizers, schemes, trainer
from cpm_jax.training import state as train_states
from tests.conftest import ROOT, python_env, tiny_config


def scheme_config(name: str, num_stages: int, num_steps: int):
    config = schemes.apply(tiny_config(num_stages=num_stages), name)
    config.training.num_steps = num_steps
    config.data.num_heldout = 2
    config.training.num_visualized = 1
    return config


def final_params(workdir) -> dict:
    """The params of `workdir`'s newest checkpoint, as numpy."""
    params, _ = train_states.restore_params(str(workdir), checkpointing.read_config(str(workdir)))
    return jax.device_get(params["params"])


def initial_params(config) -> dict:
    """What a run of `config` starts from at step 0 (trainer.restore_or_create in an empty workdir)."""
    with tempfile.TemporaryDirectory() as workdir:
        mngr = checkpointing.manager(workdir, 1)
        state, step = trainer.restore_or_create(config, workdir, mngr)
        mngr.close()
    assert step == 0
    return jax.device_get(state.params)


def same(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def pck_per_stage(workdir) -> list:
    report = json.loads((pathlib.Path(workdir) / "metrics.json").read_text())
    return report[f"{report['metric'].lower()}_per_stage"]


@pytest.fixture(scope="module")
def stagewise_then_joint(tmp_path_factory):
    """Scheme (iii) on 2 stages: stage-wise phases of 2 steps each, then 4 joint steps."""
    workdir = tmp_path_factory.mktemp("iii")
    report = schemes.run(scheme_config("iii", 2, 4), str(workdir))
    return workdir, report


@pytest.fixture(scope="module")
def stagewise(tmp_path_factory):
    """Scheme (ii) on 2 stages: 2 steps per phase, checkpoints at 1 and 2."""
    workdir = tmp_path_factory.mktemp("ii")
    config = scheme_config("ii", 2, 4)
    config.training.checkpoint_every = 1
    report = schemes.run(config, str(workdir))
    return workdir, config, report


def test_make_without_frozen_is_the_plain_optimiser():
    params = {"stage1": {"c": {"kernel": np.ones((3, 3)), "bias": np.ones(3)}}, "trunk": {"c": {"kernel": np.ones(2)}}}
    cfg = tiny_config().optimizer
    plain = optimizers.make(cfg, params).init(params)
    assert jax.tree.structure(plain) == jax.tree.structure(optax.adam(optimizers.warmup_cosine(cfg)).init(params))
    assert jax.tree.structure(optimizers.make(cfg, params, ()).init(params)) == jax.tree.structure(plain)
    sgd = configs.paper_optimizer()
    assert (jax.tree.structure(optimizers.make(sgd, params).init(params))
            == jax.tree.structure(optimizers.caffe_sgd(sgd, params).init(params)))


def test_stagewise_freezes_earlier_stages(stagewise_then_joint):
    workdir, _ = stagewise_then_joint
    groups = {2: (("stage1",), ("trunk", "stage2"))}
    assert architecture.stage_parameter_groups(3)[2] == ("stage3",)      # phase 3 would freeze stage1, trunk, stage2
    for t, (frozen, trained) in groups.items():
        phase_dir = workdir / "stagewise" / f"stage{t}"
        config = checkpointing.read_config(str(phase_dir))
        assert tuple(config.training.frozen) == frozen
        before = final_params(workdir / "stagewise" / f"stage{t - 1}")
        start, end = initial_params(config), final_params(phase_dir)
        for name in frozen:
            assert same(end[name], before[name]), f"phase {t}: frozen {name} changed"
            assert same(start[name], before[name])
        for name in trained:
            assert not same(end[name], start[name]), f"phase {t}: trained {name} did not change"
        # The saved optimiser state holds nothing for the frozen collections.
        mngr, _ = checkpointing.open_latest(str(phase_dir))
        opt_state = checkpointing.restore_latest(mngr, train_states.abstract(config))[0].opt_state
        mngr.close()
        assert jax.tree.leaves(opt_state.inner_states["frozen"]) == []
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
            opt_state.inner_states["trained"])]
        assert paths and not [p for p in paths if any(f"'{name}'" in p for name in frozen)]
        assert any("'stage" in p for p in paths)


def test_joint_phase_starts_from_stagewise(stagewise_then_joint):
    workdir, report = stagewise_then_joint
    config = checkpointing.read_config(str(workdir))
    last = workdir / "stagewise" / "stage2"
    assert config.training.init_from == str(last) and not config.training.frozen
    assert config.training.num_steps == 4 and config.model.num_stages == 2
    assert same(initial_params(config), final_params(last))
    end = final_params(workdir)
    assert not np.array_equal(jax.tree.leaves(end["stage1"])[0], jax.tree.leaves(final_params(last)["stage1"])[0])
    assert len(pck_per_stage(workdir)) == 2 and report["step"] == 4


def test_joint_schemes():
    """(i) is the default config; (iv) trains with the final stage's loss only (tests/test_gradients.py
    trains both, the sweep tests train (i))."""
    assert schemes.apply(tiny_config(), "i").to_dict() == tiny_config().to_dict()
    config = schemes.apply(tiny_config(), "iv")
    assert config.loss.intermediate_supervision is False and config.training.scheme == "joint"
    config.loss.intermediate_supervision = True
    assert config.to_dict() == tiny_config().to_dict()


def test_final_loss_only_scheme_trains(tmp_path):
    report = schemes.run(scheme_config("iv", 2, 2), str(tmp_path))
    assert len(pck_per_stage(tmp_path)) == 2 and report["step"] == 2
    saved = checkpointing.read_config(str(tmp_path))
    assert saved.loss.intermediate_supervision is False and saved.training.scheme == "joint"


def test_stagewise_writes_every_stage(stagewise):
    workdir, _, report = stagewise
    assert len(pck_per_stage(workdir)) == 2 and report["step"] == 2
    assert len(pck_per_stage(workdir / "stagewise" / "stage1")) == 1
    assert not (workdir / "stagewise" / "stage2").exists()


def test_stagewise_resume_skips_finished_phases(stagewise):
    workdir, config, _ = stagewise
    stage1 = workdir / "stagewise" / "stage1"
    mtimes = {p: p.stat().st_mtime_ns for p in stage1.rglob("*") if p.is_file()}
    end = final_params(workdir)
    (workdir / "metrics.json").unlink()
    mngr = checkpointing.manager(str(workdir), 2)
    mngr.delete(2)
    mngr.close()
    assert checkpointing.open_latest(str(workdir))[1] == 1
    report = schemes.run(config, str(workdir))
    assert report["step"] == 2 and (workdir / "metrics.json").exists()
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert same(final_params(workdir), end)  # resumed from step 1, bit-identical


def test_bad_scheme_on_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cpm_jax.train", "--config", "tests/tiny_experiment.py", "--workdir",
         str(tmp_path / "w"), "--config.training.scheme=bogus"],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) <= 3 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("cpm_jax.train: error: config.training.scheme = 'bogus': must be one of"), lines


def test_unknown_frozen_collection():
    config = tiny_config()
    config.training.frozen = ("stage3",)
    with pytest.raises(errors.ConfigError, match=r"config\.training\.frozen = \('stage3',\).*stage1, trunk, stage2$"):
        configs.validate(config)


def test_unknown_scheme_name():
    with pytest.raises(errors.ConfigError, match="'v'.*known: i, ii, iii, iv"):
        schemes.apply(tiny_config(), "v")


def test_init_from_without_checkpoint(tmp_path):
    config = tiny_config()
    config.training.init_from = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.CheckpointError) as caught:
        trainer.train_and_evaluate(config, str(tmp_path / "w"))
    message = str(caught.value)
    assert "\n" not in message and f"config.training.init_from = '{tmp_path / 'empty'}'" in message
    assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(tmp_path / "w" / "checkpoints")


def test_init_from_with_other_shapes(tmp_path, stagewise):
    config = tiny_config()
    config.model.stage1_features = 16
    config.training.init_from = str(stagewise[0] / "stagewise" / "stage1")
    with pytest.raises(errors.ConfigError, match="init_from.*'stage1' has other shapes"):
        trainer.train_and_evaluate(config, str(tmp_path / "w"))


@pytest.mark.parametrize("key, value, refused", [
    ("frozen", ("stage1",), True), ("scheme", "stagewise", True), ("init_from", "/elsewhere", False)])
def test_which_scheme_keys_a_resume_may_change(tmp_path, key, value, refused):
    """init_from is an initialiser (unused once the workdir has checkpoints); frozen and scheme change the run."""
    config = tiny_config()
    checkpointing.write_config(str(tmp_path), config)
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    config.training[key] = value
    if refused:
        with pytest.raises(errors.ConfigError, match=rf"config\.training\.{key}: "):
            checkpointing.check_same_run(str(tmp_path), config)
    else:
        checkpointing.check_same_run(str(tmp_path), config)
