"""Importing any module of cpm_jax, data_pipelines or experiments changes nothing in the process:
set-up is `cpm_jax.runtime.setup()`, called by the entry points."""
import json
import subprocess
import sys

from tests.conftest import ROOT, python_env

SCRIPT = r"""
import json, os, pkgutil, sys, importlib, pathlib
root = pathlib.Path(sys.argv[1])
# The libraries this project uses set environment variables of their own at import (TensorFlow:
# TF2_BEHAVIOR, ...; JAX: TPU_ML_PLATFORM, ...; h5py: HDF5_PLUGIN_PATH): imported before the snapshot.
import absl.app, absl.flags, absl.logging, flax.linen, h5py, jax, matplotlib, matplotlib.figure
import ml_collections.config_flags, optax, orbax.checkpoint, PIL.Image, scipy.io, tensorflow
import tensorflow_datasets
try:
    import torch  # the optional `bench` extra, for cpm_jax.benchmarks.torch_peer only
except ImportError:
    torch = None
environ, backend = dict(os.environ), dict.__getitem__(matplotlib.rcParams, "backend")
names = []
for package in ("cpm_jax", "data_pipelines"):
    module = importlib.import_module(package)
    names += [package] + [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")]
names += [f"experiments.{p.stem}" for p in sorted((root / "experiments").glob("*.py"))]
for name in names:
    if name != "cpm_jax.benchmarks.torch_peer" or torch is not None:
        importlib.import_module(name)
from jax._src import xla_bridge
ours = ("cpm_jax", "data_pipelines", "experiments")
print(json.dumps({
    "modules": names,
    "environ_changed": sorted(k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k)),
    "backend_before": str(backend),
    "backend_after": str(dict.__getitem__(matplotlib.rcParams, "backend")),
    "jax_backends_initialised": xla_bridge.backends_are_initialized(),
    "flags_defined_by_us": sorted(m for m in absl.flags.FLAGS.flags_by_module_dict() if m.startswith(ours)
                                  or any(o in m for o in ("/cpm_jax/", "/data_pipelines/", "/experiments/"))),
}))
"""


def test_importing_every_module_has_no_side_effect():
    env = python_env()
    for name in ("XLA_FLAGS", "MPLBACKEND"):  # set by runtime.setup() in this test process
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"cpm_jax.train", "cpm_jax.runtime", "cpm_jax.cli", "cpm_jax.visualize", "cpm_jax.show_data",
            "data_pipelines.pipeline", "data_pipelines.build_tfds", "experiments.synthetic"} <= set(r["modules"])
    assert r["environ_changed"] == []
    assert r["backend_after"] == r["backend_before"]
    assert not r["jax_backends_initialised"]
    assert r["flags_defined_by_us"] == []
