"""`bench --compare onnxruntime,tensorflow,tflite` (cpm_jax/benchmarks/exported.py): the tiny
model exported, checked and timed in each runtime beside JAX's forward pass; the rates, the
JAX / runtime ratios and the table's rows follow from the timings; the temporary export is
removed; asking for a runtime without the inference part, or an unknown one, is one line."""
import glob
import subprocess
import sys
import tempfile

import pytest

from cpm_jax import errors
from cpm_jax.benchmarks import measure, report
from tests.conftest import ROOT, python_env, tiny_config


def test_each_runtime_is_timed_beside_jax_and_its_export_removed():
    before = set(glob.glob(f"{tempfile.gettempdir()}/cpm_jax_bench_export_*"))
    out = measure.measure(tiny_config(), batch=2, steps=2, parts=("inference",),
                          compare="onnxruntime,tensorflow,tflite", pause=0)
    table = report.summarise(out)
    for name, label in (("onnxruntime", "ONNX Runtime"), ("tensorflow", "TensorFlow (SavedModel)"),
                        ("tflite", "TFLite")):
        rate = out[f"{name}_inference_images_per_s"]
        assert rate == pytest.approx(2 / out[f"{name}_inference_median_s"])
        assert out[f"{name}_inference_ratio"] == pytest.approx(out["jax_inference_images_per_s"] / rate)
        assert out["runtime_versions"][name]
        row = next(line for line in table.splitlines() if line.startswith(f"exported, {label} inference"))
        assert row.split()[-1] == f"{out[f'{name}_inference_ratio']:.2f}x" and f"{rate:.1f}" in row
    assert set(glob.glob(f"{tempfile.gettempdir()}/cpm_jax_bench_export_*")) == before


def test_a_runtime_needs_the_inference_part_and_a_known_name():
    with pytest.raises(errors.ConfigError, match="add inference to --parts"):
        measure.measure(tiny_config(), batch=2, steps=1, parts=("train",), compare="tflite")
    done = subprocess.run([sys.executable, "-m", "cpm_jax.bench", "--config", "tests/tiny_experiment.py",
                           "--parts", "inference", "--compare", "torch,openvino"], capture_output=True, text=True,
                          env=python_env(), cwd=ROOT, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "cpm_jax.bench: error: --compare torch,openvino: known: torch, onnxruntime, tensorflow, tflite")
