"""`predict --model` (cpm_jax/inference/models.py): the shipped synthetic model exported once
through the CLI; the multi-scale procedure run through each exported file's runtime gives the
joints JAX's path gives, on held-out synthetic figures (a trained model: peaked beliefs, so the
arg-max is not decided by rounding); through the CLI, `--model DIR/model.onnx` prints the JSON
`--pretrained synthetic` prints, runtime aside; a corrupted export is one line naming the file."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cpm_jax.evaluation import multiscale
from cpm_jax.inference import models
from data_pipelines import synthetic
from tests.conftest import ROOT, python_env

FILES = {"onnx": "model.onnx", "tflite": "model.tflite", "savedmodel": "saved_model"}
FIGURES = 3


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=python_env(), cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "synthetic"
    done = run("cpm_jax.export", "--pretrained", "synthetic", "--out", out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Held-out synthetic figures as PNG files (160 x 160, the figure centred by the image rule)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(FIGURES):
        path = folder / f"figure{i}.png"
        Image.fromarray(synthetic.render_example(0, "heldout", i)["image"]).save(path)
        paths.append(path)
    return paths


def joints_of(model: models.Model, paths) -> tuple[np.ndarray, np.ndarray]:
    predictor = model.predictor(multiscale.Options(scales=(0.8, 1.0, 1.2), batch_size=1))
    found = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        person, _ = multiscale.place_person(image.shape, model.config.data, model.config.model.input_size)
        found.append(predictor.predict(image, person))
    return np.stack([j for j, _ in found]), np.stack([p for _, p in found])


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_each_exported_runtime_gives_the_jax_paths_joints(export_dir, photos, fmt):
    reference, reference_peaks = joints_of(models.load(models.Source(pretrained="synthetic")), photos)
    model = models.load(models.Source(exported=str(export_dir / FILES[fmt])))
    assert model.runtime == {"onnx": "onnxruntime", "tflite": "tflite", "savedmodel": "tensorflow"}[fmt]
    joints, peaks = joints_of(model, photos)
    assert joints.shape == (FIGURES, 1, 14, 2)
    np.testing.assert_array_equal(joints, reference)
    np.testing.assert_allclose(peaks, reference_peaks, atol=1e-4)
    assert reference_peaks.mean() > 0.3          # peaked beliefs: the equality means something


def test_predict_model_flag_prints_what_the_jax_path_prints(export_dir, photos, tmp_path):
    by_model = run("cpm_jax.predict", "--model", export_dir / "model.onnx", *photos[:2], "--out", tmp_path / "a")
    assert by_model.returncode == 0, by_model.stderr
    by_jax = run("cpm_jax.predict", "--pretrained", "synthetic", *photos[:2], "--out", tmp_path / "b")
    assert by_jax.returncode == 0, by_jax.stderr
    a, b = json.loads(by_model.stdout), json.loads(by_jax.stdout)
    assert (a["model"], a["runtime"], a["pretrained"], a["checkpoint_step"]) == (
        str(export_dir / "model.onnx"), "onnxruntime", None, None)
    assert (b["runtime"], b["pretrained"]) == ("jax", "synthetic")
    for x, y in zip(a["images"], b["images"]):
        assert [(j["name"], j["x"], j["y"]) for j in x["joints"]] == [(j["name"], j["x"], j["y"]) for j in y["joints"]]
        np.testing.assert_allclose([j["belief"] for j in x["joints"]], [j["belief"] for j in y["joints"]], atol=1e-4)
        assert (tmp_path / "a" / (x["picture"].rsplit("/", 1)[-1])).exists()


def test_predict_refuses_a_corrupted_export_naming_the_file(export_dir, photos, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = bytearray((export_dir / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    (broken / "model_card.json").write_bytes((export_dir / "model_card.json").read_bytes())
    done = run("cpm_jax.predict", "--model", broken / "model.onnx", photos[0], "--out", tmp_path / "o")
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"cpm_jax.predict: error: {broken / 'model.onnx'}") and "SHA-256" in line, line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
