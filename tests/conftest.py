"""Shared test helpers: tiny configs (small input, few channels, small kernels) and paths."""
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax import configs, runtime

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def pytest_configure(config):
    """The entry points' set-up, once per test process (each xdist worker too), before any test
    module runs JAX: the XLA CPU flag, TensorFlow off GPUs, Agg, pipelines closed at exit. And one
    JAX compilation cache for the whole session: made by the first process (xdist's controller,
    before it starts the workers, which inherit the variable), used by every worker and every
    command-line run a test starts, so that the tiny model's programs compile once. It keeps
    every program, not only those that took a second to compile (JAX's default): a tiny
    training run's eager operations (about 170 of them, 0.05 s each) would otherwise compile
    again in every run a test starts (a 24-step run: 35 -> 30 s).

    TensorFlow's import also imports Keras (2.5 of its 12 s here), which this project never
    uses; TF_USE_LEGACY_KERAS=1 points TensorFlow at tf_keras instead, which is not installed,
    so that no Keras is loaded in any test process. Users' processes keep TensorFlow's default:
    they may use tf.keras alongside."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    runtime.setup()
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._cpm_jax_made_cache = tempfile.mkdtemp(
            prefix="cpm_jax_test_jit_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    """Removes the session's compilation cache, in the process that made it."""
    made = getattr(config, "_cpm_jax_made_cache", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def running_in_ci() -> bool:
    """CI sets CI (CI=true); an empty value or "0"/"false" counts as unset."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_shared(paths, what: str) -> None:
    """Skips the calling test (with a visible reason) when any of `paths` (one path or several)
    does not exist; under CI, where ../shared is always present, fails instead, so that a
    missing or moved copy cannot silently turn tests into skips."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    missing = [str(p) for p in paths if not pathlib.Path(p).exists()]
    if not missing:
        return
    reason = f"needs {what}; missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
    if running_in_ci():
        pytest.fail(f"{reason} (CI is set: the shared data must be there)", pytrace=False)
    pytest.skip(reason)


def normal(seed: int, shape, dtype=np.float32) -> jax.Array:
    """Standard-normal test data, drawn by NumPy: `jax.random` compiles a random-bit program for
    every new shape (2-4 s each on XLA:CPU), which made test data the slowest part of some tests."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def tiny_config(num_stages: int = 2, input_size: int = 32, dropout_rate: float = 0.0):
    """A synthetic-data experiment small enough for a few CPU seconds per step."""
    config = configs.paper_config(dataset="synthetic", num_stages=num_stages)
    m = config.model
    m.input_size = input_size
    m.trunk_kernel, m.stage1_kernel, m.stage_kernel = 3, 3, 3
    m.trunk_features, m.bottleneck_features, m.stage1_features, m.stage_features = 4, 4, 8, 8
    m.dropout_rate = dropout_rate
    m.kernel_init = "he_normal"
    config.data.synthetic_image_size = 64
    config.data.num_heldout = 6
    config.optimizer = dict(name="adam", learning_rate=1e-3, warmup_steps=1, decay_steps=100)
    t = config.training
    t.global_batch_size = 4
    t.num_steps = 3
    t.log_every = 1
    t.checkpoint_every = 2
    t.keep_checkpoints = 2
    t.eval_batch_size = 4
    t.num_visualized = 2
    return config


def trained_tiny_workdir(path) -> str:
    """`path` after 2 training steps of the tiny 2-stage CPM (a checkpoint and config.json;
    accuracy is irrelevant)."""
    from cpm_jax.training import trainer
    config = tiny_config()
    config.training.num_steps = 2
    config.data.num_heldout = 2
    config.training.num_visualized = 1
    trainer.train_and_evaluate(config, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory) -> str:
    """`trained_tiny_workdir`, trained once per test process and shared by the modules that only
    read it (predict, evaluate run, pretrained: they add files beside its checkpoints at most)."""
    return trained_tiny_workdir(tmp_path_factory.mktemp("tiny_trained"))


@pytest.fixture
def tiny():
    return tiny_config()


def python_env(**extra) -> dict:
    """Environment for a subprocess running this project's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
