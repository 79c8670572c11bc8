"""`python -m cpm_jax.bench`: runs on the tiny config, prints the table and one JSON line, and
compares with the PyTorch peer where PyTorch is installed (CI installs the `bench` extra). No
timing thresholds: figures only have to be there and be positive."""
import collections
import importlib.util
import json
import subprocess
import sys
import time

import jax
import pytest

from cpm_jax import benchmarks, configs, summary
from cpm_jax.benchmarks import hardware, layers, measure, report, timing
from cpm_jax.cpu import onednn
from cpm_jax.model import architecture
from cpm_jax.training import state as train_states
from tests.conftest import ROOT, python_env, tiny_config

TORCH = importlib.util.find_spec("torch") is not None
JSON_KEYS = ("train_images_per_s", "inference_images_per_s", "pipeline_images_per_s", "peak_host_memory_gb",
             "fed_train_images_per_s", "train_compile_s", "first_step_s", "forward_gflops_per_image",
             "train_gflops_per_s", "memory_gb_per_s", "cache_gb_per_s")


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpm_jax.bench", "--config", "tests/tiny_experiment.py",
                           "--steps", "2", "--pipeline_batches", "2", *args],
                          cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=600)


def quick_figures(monkeypatch) -> None:
    """For the in-process runs of `measure`: the device's practical peak (a 2048 x 2048 matrix
    product) and memory bandwidth (passes over 256 MiB) as fixed figures, which these tests do not
    check (the command-line test does: > 0), and each convolution's sample (LAYER_SAMPLE_S) one
    call long: the times only have to be there and positive, not be steady, here."""
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, size: 1.0)
    monkeypatch.setattr(hardware, "elementwise_gb_per_s", lambda mib: 1.0)
    monkeypatch.setattr(layers, "LAYER_SAMPLE_S", 1e-9)


@pytest.mark.skipif(not TORCH, reason="PyTorch is not installed: pip install -e '.[bench]' (CI installs it)")
def test_cli_prints_table_and_json_with_the_torch_peer():
    result = run_bench("--json", "--compare", "torch")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    for key in JSON_KEYS + ("torch_train_images_per_s", "torch_inference_images_per_s", "train_ratio",
                            "inference_ratio"):
        assert out[key] > 0, key
    assert out["torch_params"] == out["params"] == summary.describe(tiny_config().model)["params"]
    assert out["train_ratio"] == pytest.approx(out["train_images_per_s"] / out["torch_train_images_per_s"])
    assert out["recompilations"] == 0  # the step compiles once, as `train` calls it
    assert out["convolutions"].split(" (")[0] == onednn.status().split(" (")[0]  # as set up here (conftest)
    table = "\n".join(lines[:-1])
    for row in ("JAX train", "PyTorch train", "JAX inference", "PyTorch inference", "input pipeline alone",
                "peak assumed:", "memory bandwidth:", "peak host memory", "convolutions: "):
        assert row in table, row


def test_without_torch_the_comparison_is_skipped_with_the_reason(monkeypatch):
    quick_figures(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.delitem(sys.modules, "cpm_jax.benchmarks.torch_peer", raising=False)
    monkeypatch.delattr(benchmarks, "torch_peer", raising=False)  # imported earlier in this process
    out = measure.measure(tiny_config(), batch=4, steps=1, parts=("train",), compare="torch")
    assert "pip install -e '.[bench]'" in out["torch_skipped"]
    assert "train_ratio" not in out and out["train_images_per_s"] > 0
    assert "PyTorch comparison skipped: PyTorch is not installed" in report.summarise(out)


def test_parts_are_checked_before_anything_runs():
    result = run_bench("--parts", "train,speed")
    assert result.returncode == 1
    assert "--parts: unknown speed; known: train, inference, pipeline, fed, layers" in result.stderr


@pytest.mark.parametrize("which", ["tiny", "paper"])
def test_the_layer_list_names_every_convolution_kernel_of_the_model(which):
    config = tiny_config(num_stages=3) if which == "tiny" else configs.paper_config("lsp")
    kernels = collections.Counter(
        leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(train_states.abstract(config).params)
        if path[-1].key == "kernel")
    listed = collections.Counter()
    for conv, count in architecture.model_convolutions(config.model).items():
        listed[(conv.kernel, conv.kernel, conv.in_channels, conv.features)] += count
    assert listed == kernels
    on_image = [conv for conv in architecture.model_convolutions(config.model) if conv.on_image]
    assert [(c.size, c.in_channels) for c in on_image] == [(config.model.input_size, 3)]


@pytest.mark.skipif(not TORCH, reason="PyTorch is not installed: pip install -e '.[bench]' (CI installs it)")
def test_layers_part_times_each_convolution_in_both_frameworks_and_sums_them_over_the_model(monkeypatch):
    quick_figures(monkeypatch)
    config = tiny_config(num_stages=3)
    out = measure.measure(config, batch=2, steps=1, parts=("train", "layers"), compare="torch", pause=0)
    counts = architecture.model_convolutions(config.model)
    assert [(r["size"], r["in_channels"], r["kernel"], r["features"], r["count"]) for r in out["layers"]] == [
        (c.size, c.in_channels, c.kernel, c.features, n) for c, n in counts.items()]
    for kind in ("jax_forward", "jax_train", "torch_forward", "torch_train"):
        assert all(r[f"{kind}_ms"] > 0 for r in out["layers"]), kind
        assert out[f"layers_{kind}_ms"] == pytest.approx(sum(r["count"] * r[f"{kind}_ms"] for r in out["layers"]))
    table = report.summarise(out)
    assert "all convolutions of the model" in table and "the whole JAX training step:" in table
    assert f"{config.model.input_size}x{config.model.input_size}x3 -> " in table and "(image)" in table


def test_cpu_peak_reckoning():
    zen3 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\ncpu MHz\t\t: 2450.000\nflags\t\t: fpu avx avx2 fma\n"
    peak, note = hardware.cpu_peak(zen3, cores=2)
    assert peak == pytest.approx(2 * 2.45 * 32) and "32 FLOP/cycle" in note
    zen4 = zen3.replace("fma", "fma avx512f")
    assert hardware.cpu_peak(zen4, cores=2)[0] == pytest.approx(2 * 2.45 * 32)  # 512-bit FMAs as two halves
    intel = zen4.replace("AuthenticAMD", "GenuineIntel").replace("25", "6")
    assert hardware.cpu_peak(intel, cores=4)[0] == pytest.approx(4 * 2.45 * 64)
    assert hardware.cpu_peak("flags: avx2 fma\n", cores=2)[0] == 0.0  # no clock: unknown, not guessed


def test_spread_and_alternation():
    assert timing.spread([0.5, 1.0, 2.0], images=8) == {
        "median_s": 1.0, "images_per_s": 8.0, "min_images_per_s": 4.0, "max_images_per_s": 16.0}
    order = []
    times = timing.alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, steps=4, rounds=2,
                            pause=0)
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # each run: one untimed call, 2 timed
    assert [len(t) for t in times.values()] == [4, 4]
    calls = []  # the untimed first call of a run is left out of the times
    times = timing.alternate({"slow_first": lambda: (calls.append(1), time.sleep(0.05 if len(calls) % 3 == 1 else 0))},
                            steps=4, rounds=2, pause=0)
    assert len(calls) == 6 and max(times["slow_first"]) < 0.04


def test_help_lists_the_flags_of_the_entry_modules():
    for module, wanted in (("cpm_jax.bench", ("--config", "--batch", "--steps", "--parts", "--compare",
                                              "--pipeline_batches", "--peak_gflops", "--[no]json")),
                           ("cpm_jax.benchmarks.accelerator", ("--out", "--config", "--pipeline_config", "--dtypes",
                                                               "--max_batch", "--cores", "--train_steps",
                                                               "--time_limit_s"))):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=python_env(),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode in (0, 1), result.stderr[-3000:]  # absl's --help exits 1
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "flags:" in result.stdout, module
        for flag in wanted:
            assert f"  {flag}:" in result.stdout, (module, flag)
