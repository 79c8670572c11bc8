"""show_data: PNGs of augmented training crops (synthetic always, LSPET when its files exist)."""
import struct
import subprocess
import sys

import numpy as np
import pytest

from cpm_jax import show_data
from data_pipelines import skeleton
from tests.conftest import ROOT, SHARED, python_env, require_shared, tiny_config

LSPET = SHARED / "datasets" / "lspet"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def _show_data(out, *extra, config=ROOT / "tests" / "tiny_experiment.py"):
    args = [sys.executable, "-m", "cpm_jax.show_data", "--config", str(config), "--out", str(out), *extra]
    return subprocess.run(args, capture_output=True, text=True, env=python_env(), timeout=120, cwd=ROOT)


def _check_pictures(result, out, positions):
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.split()
    names = [f"example_{p:06d}.png" for p in positions] + ["overview.png"]
    assert printed == [str(out / name) for name in names]
    for name in names[:-1]:
        width, height = _png_size(out / name)
        assert 600 <= width <= 2000 and 300 <= height <= 1000, (name, width, height)
        assert (out / name).stat().st_size > 5_000
    width, height = _png_size(out / "overview.png")
    assert width >= 400 and height >= 250


def test_cli_writes_example_pictures_and_overview(tmp_path):
    result = _show_data(tmp_path, "--num", "3", "--start", "5")
    _check_pictures(result, tmp_path, [5, 6, 7])


def test_cli_rejects_a_bad_num_clearly(tmp_path):
    result = _show_data(tmp_path / "out", "--num", "0")
    assert result.returncode == 1
    assert "cpm_jax.show_data: error: --num = 0: must be >= 1" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, num, message", [
    ("data.dataset", "imagenet", 2, r"config.data.dataset = 'imagenet': unknown dataset"),
    ("model.input_size", 100, 2, r"config.model.input_size = 100: must be a positive multiple of 8"),
    ("data.dataset", "synthetic", 0, r"--num = 0: must be an integer >= 1"),
])
def test_bad_values_fail_clearly_before_reading_data(tmp_path, key, value, num, message):
    config = tiny_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        show_data.write_pictures(config, num, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_multi_person_examples_get_a_stage1_panel(tmp_path):
    """The stage-1 panel (multi-person datasets) drawn from a hand-made example."""
    size, cells = 64, 8
    joints = np.stack([np.linspace(10, 50, 14), np.linspace(12, 52, 14)], -1).astype(np.float32)
    maps = np.zeros((cells, cells, 15), np.float32)
    maps[2, 3, 0] = maps[5, 5, 1] = 1.0
    example = {"image": np.zeros((size, size, 3), np.float32), "targets": maps, "stage1_targets": maps,
               "joints": joints, "visibility": np.array([2] * 12 + [1, 0], np.int32), "index": np.int64(7)}
    two, three = tmp_path / "two.png", tmp_path / "three.png"
    show_data.example_figure({k: v for k, v in example.items() if k != "stage1_targets"}, "x", 0,
                             skeleton.LSP, str(two))
    show_data.example_figure(example, "mpii", 0, skeleton.LSP, str(three))
    assert _png_size(three)[0] > 1.3 * _png_size(two)[0]  # one panel more


def test_cli_on_lspet(tmp_path):
    require_shared([LSPET / "joints.mat", LSPET / "images" / "im00001.jpg"], "the LSPET copy (shared/datasets/lspet)")
    result = _show_data(tmp_path, "--num", "2", "--config.data.dataset=lspet",
                        f"--config.data.paths.lspet={LSPET}", "--config.model.input_size=128")
    _check_pictures(result, tmp_path, [0, 1])
