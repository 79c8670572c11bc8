"""`configs.validate` checks every number and switch of a config (type and range), naming the key:
a bad value fails before any work, not as a ZeroDivisionError, a TensorFlow error or a run that
trains to nothing. Every numeric and bool key of `configs.paper_config` (and both optimisers' keys)
gets values it must refuse; the command line stops at once, writing nothing."""
import math
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from cpm_jax import configs, errors
from data_pipelines import registry, synthetic
from tests.conftest import ROOT, python_env, tiny_config

TINY = str(ROOT / "tests" / "tiny_experiment.py")


def paper_optimizer_config() -> ml_collections.ConfigDict:
    config = tiny_config()
    config.optimizer = configs.paper_optimizer()
    return config


BASES = {"adam": tiny_config, "caffe_sgd": paper_optimizer_config}


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def is_numeric(value) -> bool:
    return isinstance(value, (bool, int, float)) or (
        isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, float)) for v in value))


def bad_values(value) -> list:
    """Values no numeric key allows, of the kind of `value`: out of range (every key's range
    excludes -1), the wrong type, not finite."""
    if isinstance(value, bool):
        return [1, "yes", None]
    if isinstance(value, int):
        return [-1, 2.5, True, "3", None]
    if isinstance(value, float):
        return [-1.0, math.nan, math.inf, True, "0.5", None]
    return [(-1.0, 1.0), (1.0, math.nan), (1.0,), "x"]


CASES = [(base, key, bad) for base, make in BASES.items() for key, value in leaves(make().to_dict())
         if is_numeric(value) for bad in bad_values(value)]


def with_value(make, key: str, value, **more) -> ml_collections.ConfigDict:
    """The config with `key` set to `value` (and `more`: {"section__key": value}), type checks of
    ConfigDict bypassed (as a config file building its own dict would)."""
    tree = make().to_dict()
    for dotted, new in {key: value, **{k.replace("__", "."): v for k, v in more.items()}}.items():
        node = tree
        *parents, name = dotted.split(".")
        for part in parents:
            node = node[part]
        node[name] = new
    return ml_collections.ConfigDict(tree)


def test_every_numeric_key_of_the_paper_config_is_tested():
    """A new number in configs.paper_config(...) gets a rule (validate fails the parametrized test
    below for it otherwise), and the experiments and shipped configs follow the rules."""
    tested = {key for _, key, _ in CASES}
    paper = {key for key, value in leaves(configs.paper_config("lsp").to_dict()) if is_numeric(value)}
    assert paper <= tested, paper - tested
    assert {"training.log_every", "training.eval_every", "training.eval_batch_size", "training.keep_checkpoints",
            "optimizer.learning_rate", "optimizer.warmup_steps", "optimizer.decay_steps", "seed",
            "data.skip_bad_examples", "loss.intermediate_supervision"} <= tested
    for make in BASES.values():
        configs.validate(make(), registry.DATASETS)


@pytest.mark.parametrize("base, key, bad", CASES, ids=[f"{b}-{k}={v!r}" for b, k, v in CASES])
def test_a_bad_value_names_its_key(base, key, bad):
    config = with_value(BASES[base], key, bad)
    with pytest.raises(errors.ConfigError) as caught:
        configs.validate(config, registry.DATASETS)
    assert str(caught.value).startswith(f"config.{key} = "), str(caught.value)
    assert "must be" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("key, value", [
    ("training.eval_every", 0), ("training.keep_checkpoints", 1), ("training.log_every", 1),
    ("training.gradient_histogram_every", 0), ("training.num_visualized", 1), ("seed", 0),
    ("model.dropout_rate", 0.0), ("data.flip_probability", 1.0), ("data.max_rotation", 0.0),
    ("data.num_heldout", 1), ("data.synthetic_image_size", 32), ("optimizer.warmup_steps", 0),
    ("optimizer.decay_steps", 2), ("data.scale_range", [1.0, 1.0]), ("data.max_skipped_fraction", 1),
])
def test_the_edges_of_each_range_are_allowed(key, value):
    configs.validate(with_value(tiny_config, key, value), registry.DATASETS)


def test_rules_that_involve_two_keys_and_the_limits_they_follow():
    with pytest.raises(errors.ConfigError, match=r"^config\.optimizer\.decay_steps = 5: must be > "
                                                 r"optimizer\.warmup_steps = 5"):
        configs.validate(with_value(tiny_config, "optimizer.warmup_steps", 5, optimizer__decay_steps=5),
                         registry.DATASETS)
    with pytest.raises(errors.ConfigError, match=r"^config\.optimizer\.name = 'sgd': unknown; known: caffe_sgd, adam"):
        configs.validate(with_value(tiny_config, "optimizer.name", "sgd"), registry.DATASETS)
    # The synthetic figures' smallest canvas is the rule's limit.
    assert synthetic.render_example(0, "train", 0, 32)["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError):
        synthetic.render_example(0, "train", 0, 31)
    with pytest.raises(errors.ConfigError, match=r"^config\.data\.synthetic_image_size = 31: must be an integer >= 32"):
        configs.validate(with_value(tiny_config, "data.synthetic_image_size", 31), registry.DATASETS)


def test_each_optimizer_reads_exactly_the_keys_validate_checks():
    """optimizers.make and its schedule with only OPTIMIZER_KEYS[name] (and the name) set: a key
    the optimiser reads but validate does not check would fail here."""
    import jax.numpy as jnp

    from cpm_jax.training import optimizers
    assert set(configs.OPTIMIZER_KEYS) == set(optimizers.OPTIMIZERS) == set(optimizers.SCHEDULES)
    params = {name: {"conv": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}} for name in ("stage1", "stage2")}
    for name, keys in configs.OPTIMIZER_KEYS.items():
        full = BASES[name]().optimizer
        cfg = ml_collections.ConfigDict({"name": name, **{k: full[k] for k in keys}})
        tx = optimizers.make(cfg, params)
        tx.update(params, tx.init(params), params)
        assert np.isfinite(float(optimizers.schedule(cfg)(3)))
        for key in keys:        # and each of them is needed
            partial = ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != key})
            with pytest.raises(AttributeError):
                tx = optimizers.make(partial, params)
                tx.update(params, tx.init(params), params)
                optimizers.schedule(partial)(3)


# Run as a user runs it, with JAX_LOG_COMPILES=1: a compiled program would log a line.
CHECK_IMPORTS = ("import atexit, runpy, sys\n"
                 "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))\n"
                 "sys.argv = ['cpm_jax.train'] + sys.argv[1:]\n"
                 "runpy.run_module('cpm_jax.train', run_name='__main__', alter_sys=True)\n")


@pytest.mark.parametrize("override, line", [
    ("training.log_every=0", "config.training.log_every = 0: must be an integer >= 1 (steps between log lines)"),
    ("training.eval_every=-5", "config.training.eval_every = -5: must be an integer >= 0"),
    ("training.eval_batch_size=0", "config.training.eval_batch_size = 0: must be an integer >= 1"),
    ("optimizer.learning_rate=-0.001", "config.optimizer.learning_rate = -0.001: must be a number > 0"),
    ("training.keep_checkpoints=0", "config.training.keep_checkpoints = 0: must be an integer >= 1"),
])
def test_train_refuses_a_bad_value_at_once_writing_nothing(tmp_path, override, line):
    workdir = tmp_path / "w"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, "--config", TINY, "--workdir", str(workdir),
                             f"--config.{override}"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env=python_env(JAX_LOG_COMPILES="1"))
    seconds = time.monotonic() - start
    assert result.returncode == 1, result.stderr[-3000:]
    *before, last = result.stderr.strip().splitlines()
    assert last.startswith(f"cpm_jax.train: error: {line}"), result.stderr
    assert len(before) <= 1 and all("] runtime: " in b for b in before), result.stderr  # set-up's note; no compile log
    assert "tensorflow imported: False" in result.stdout
    assert not workdir.exists()
    assert seconds < 30, seconds
