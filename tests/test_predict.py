"""`python -m cpm_jax.predict` on a real LSPET photo with a tiny CPM trained here for 2 steps: JSON
with 14 named joints inside the image and a PNG; --center/--scale; errors that name the file or
the workdir."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cpm_jax import errors, predict
from cpm_jax.evaluation import multiscale
from cpm_jax.training import checkpointing
from data_pipelines import skeleton
from tests import images
from tests.conftest import ROOT, python_env, require_shared, tiny_config

PHOTOS = [images.LSPET_ROOT / "images" / "im00001.jpg", images.LSPET_ROOT / "images" / "im00002.jpg"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cpm_jax.predict", *map(str, args)],
                          capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
    return tiny_workdir


def check_report_image(entry: dict, width: int, height: int) -> None:
    assert (entry["width"], entry["height"]) == (width, height)
    assert [j["name"] for j in entry["joints"]] == list(skeleton.LSP.joint_names)
    xy = np.array([[j["x"], j["y"]] for j in entry["joints"]])
    assert xy.shape == (14, 2) and np.isfinite(xy).all()
    assert (xy >= 0).all() and (xy[:, 0] <= width - 1).all() and (xy[:, 1] <= height - 1).all()
    assert all(np.isfinite(j["belief"]) for j in entry["joints"])
    with Image.open(entry["picture"]) as picture:
        assert picture.format == "PNG" and picture.size[0] > 300


def test_predict_on_real_photos_prints_json_and_writes_pngs(request, tmp_path):
    require_shared(PHOTOS, "real LSPET photos (shared/datasets/lspet/images)")
    workdir = request.getfixturevalue("workdir")       # trained only when the photos are there
    out = tmp_path / "out"
    result = cli("--workdir", workdir, "--out", out, *PHOTOS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)                 # stdout is exactly one JSON document
    assert report["checkpoint_step"] == 2 and report["stage"] == 2 and len(report["scales"]) == 7
    assert [e["image"] for e in report["images"]] == [str(p) for p in PHOTOS]
    for entry, photo in zip(report["images"], PHOTOS):
        with Image.open(photo) as im:
            width, height = im.size
        check_report_image(entry, width, height)
        assert entry["center"] == [(width - 1) / 2, (height - 1) / 2]
        assert entry["base_factor"] == pytest.approx(0.8 * 32 / height)      # the LSP rule
        assert entry["picture"] == str(out / f"{photo.stem}_pose.png")


def test_center_and_scale_choose_the_person(workdir, tmp_path):
    photo = images.write_jpeg(tmp_path / "me.jpg", images.gradient(90, 140))
    report = predict.predict_images(str(workdir), [photo, photo], center=(30.0, 40.0), scale=80.0,
                                    out=str(tmp_path / "out"),
                                    options=multiscale.Options(scales=(1.0,)))
    config = checkpointing.read_config(str(workdir))
    for entry in report["images"]:
        check_report_image(entry, 140, 90)
        assert entry["center"] == [30.0, 40.0]
        assert entry["base_factor"] == pytest.approx(config.data.person_height * 32 / 80.0)
    assert report["images"][1]["picture"].endswith("me_2_pose.png")     # no overwriting
    assert predict.parse_center("3,4.5") == (3.0, 4.5)
    with pytest.raises(ValueError, match="X,Y"):
        predict.parse_center("3")


def test_bad_images_and_workdirs_are_named(workdir, tmp_path):
    with pytest.raises(errors.InputError, match="nope.jpg: no such image file"):
        predict.predict_images(str(workdir), [str(tmp_path / "nope.jpg")])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(errors.BadExampleError, match=f"{broken}: cannot decode the image"):
        predict.predict_images(str(workdir), [str(broken)])
    untrained = tmp_path / "untrained"
    checkpointing.write_config(str(untrained), tiny_config())
    photo = images.write_jpeg(tmp_path / "ok.jpg", images.gradient(40, 30))
    with pytest.raises(checkpointing.NoCheckpointError, match=f"{untrained}: no checkpoint"):
        predict.predict_images(str(untrained), [photo])
    result = cli("--workdir", tmp_path / "missing", photo)
    assert result.returncode == 1
    assert f"predict: error: {tmp_path / 'missing'}: no such directory" in result.stderr
    result = cli("--workdir", workdir, "--out", tmp_path / "o", photo, broken)
    assert result.returncode == 1 and f"{broken}: cannot decode the image" in result.stderr
    assert result.stdout == ""


def test_results_that_cannot_be_right_are_errors_not_exit_0(workdir, tmp_path):
    """A centre outside the image and a 1x1 image used to give every joint at (0, 0), exit 0."""
    photo = images.write_jpeg(tmp_path / "p.jpg", images.gradient(60, 40))
    result = cli("--workdir", workdir, "--center", "45,10", "--out", tmp_path / "o", photo)
    assert result.returncode == 1 and result.stdout == ""
    assert "centre (45, 10) lies outside the 40x60 image" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
    tiny_photo = images.write(tmp_path / "dot.png", images.encode(np.zeros((1, 1, 3)), "PNG"))
    with pytest.raises(errors.InputError, match="1x1 image is too small"):
        predict.predict_images(str(workdir), [tiny_photo], out=str(tmp_path / "o"))


def test_a_large_photo_is_resized_first_and_answered_in_its_own_pixels(workdir, tmp_path):
    big = images.write_jpeg(tmp_path / "big.jpg", images.gradient(600, 400))
    lines = []
    report = predict.predict_images(str(workdir), [big], out=str(tmp_path / "o"), max_image_side=150,
                                    options=multiscale.Options(scales=(1.0,)), log=lines.append)
    assert any("(400x600, resized to 100x150)" in line for line in lines)
    assert any("done in" in line for line in lines)
    entry = report["images"][0]
    assert (entry["width"], entry["height"]) == (400, 600)
    xy = np.array([[j["x"], j["y"]] for j in entry["joints"]])
    # Joints come back in the 400x600 photo's pixels: a 100x150 arg-max p maps to (p + 0.5) * 4 - 0.5.
    assert ((xy >= -0.5) & (xy <= [399.5, 599.5])).all()
    assert np.allclose((xy - 1.5) % 4, 0, atol=1e-4)      # integer p -> 4 p + 1.5
    small, ratio = predict.shrink(images.gradient(600, 400), 150)
    assert small.shape == (150, 100, 3) and np.allclose(ratio, 0.25)
    same, one = predict.shrink(images.gradient(60, 40), 150)
    assert same.shape == (60, 40, 3) and np.allclose(one, 1)

