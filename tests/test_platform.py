"""The model knows nothing of CPUs: `CPM` runs `lax.conv_general_dilated` unless given another
convolution; `platform.make_model` gives it the CPU backend's where `runtime.setup()` registered
one, and CPM_JAX_CPU_BACKEND=0 turns the backend off. Both paths compute the same beliefs."""
import json
import subprocess
import sys

import jax
import numpy as np
from jax import lax

from cpm_jax import platform
from cpm_jax.cpu import convolution
from cpm_jax.model import cpm
from tests.conftest import ROOT, normal, python_env, tiny_config


def test_the_model_defaults_to_xlas_convolution_and_make_model_picks_the_cpu_one():
    m = tiny_config().model
    assert cpm.CPM(m).conv is lax.conv_general_dilated
    assert platform.make_model(m).conv is convolution.conv_general_dilated  # conftest ran runtime.setup()
    saved = platform.convolution()
    try:
        platform.use_cpu_convolution(None)
        assert platform.make_model(m).conv is lax.conv_general_dilated
    finally:
        platform.use_cpu_convolution(saved)


def test_both_paths_give_the_same_beliefs_and_only_one_has_custom_calls():
    m = tiny_config().model
    image = normal(3, (2, m.input_size, m.input_size, 3)) * 0.3
    center = normal(4, (2, m.input_size // 8, m.input_size // 8, 1))
    variables = cpm.CPM(m).init(jax.random.key(0), image, center)
    outputs, programs = [], []
    for model in (cpm.CPM(m), platform.make_model(m)):
        fn = jax.jit(lambda v, model=model: model.apply(v, image, center))
        outputs.append(np.asarray(fn(variables)))
        programs.append(fn.lower(variables).compile().as_text())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    assert "custom_call_target=\"Cpm" not in programs[0]
    assert programs[0] != programs[1]


SCRIPT = r"""
import json, sys
import cpm_jax.model.cpm, cpm_jax.platform, cpm_jax.training.trainer, cpm_jax.evaluation.evaluators
imported = sorted(m for m in sys.modules if m.startswith("cpm_jax.cpu"))
from cpm_jax import platform, runtime
runtime.setup(tensorflow=False)
import os
print(json.dumps({"cpu_modules_before_setup": imported, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "convolution": platform.convolution().__module__ + "." + platform.convolution().__name__}))
"""


def run_script(**env) -> dict:
    environment = {k: v for k, v in python_env().items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env={**environment, **env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_library_loads_no_cpu_backend_and_the_switch_turns_it_off():
    on = run_script()
    assert on["cpu_modules_before_setup"] == []
    assert on["convolution"] == "cpm_jax.cpu.convolution.conv_general_dilated"
    assert on["omp_wait_policy"] == "PASSIVE"        # oneDNN's idle threads sleep: cpu/process.py
    assert run_script(OMP_WAIT_POLICY="ACTIVE")["omp_wait_policy"] == "ACTIVE"     # a user's choice kept
    off = run_script(CPM_JAX_CPU_BACKEND="0")
    assert off["convolution"].endswith("conv_general_dilated") and "cpm_jax" not in off["convolution"]
