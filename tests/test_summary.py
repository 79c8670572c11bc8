"""`python -m cpm_jax.summary` prints the paper's numbers as one JSON object."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, python_env


def summary(*args):
    result = subprocess.run([sys.executable, "-m", "cpm_jax.summary", *args], capture_output=True,
                            text=True, env=python_env(), cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lsp_paper_config():
    s = summary("--config", "experiments/lsp_paper.py")
    assert s["params"] == 31_219_866
    assert s["params_per_stage"] == [4_386_095, 7_515_311, 4_829_615, 4_829_615, 4_829_615, 4_829_615]
    assert s["receptive_field_px"][:3] == [167, 407, 647]
    assert s["output_shape"] == [1, 6, 46, 46, 15]
    assert s["gflops"] == pytest.approx(2 * 175.4, abs=0.2)


def test_flic_paper_config_and_overrides():
    assert summary("--config", "experiments/flic_paper.py")["params"] == 21_323_816
    three = summary("--config", "experiments/lsp_paper.py", "--config.model.num_stages=3")
    assert three["params"] == 4_386_095 + 7_515_311 + 4_829_615
    assert len(three["receptive_field_px"]) == 3


def test_bad_value_is_reported():
    result = subprocess.run([sys.executable, "-m", "cpm_jax.summary", "--config", "experiments/lsp_paper.py",
                             "--config.model.input_size=300"], capture_output=True, text=True,
                            env=python_env(), cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "config.model.input_size = 300" in result.stderr
    assert "Traceback" not in result.stderr  # a user error: one line (tests/test_cli_errors.py)
