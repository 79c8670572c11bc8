"""`python -m cpm_jax.predict --pretrained lspet_cpu` on real photos as a user runs it: a photo 4x
larger costs no more memory than a normal one and is answered in its own pixels; a photo of two
people side by side gets one warning line (exit 0) naming it and --center/--scale, a photo of one
of them alone gets none, pointing --center/--scale at one person silences it, and a photo of no
one there is told to check them. A truncated large JPEG is still one error line naming it."""
import json
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
from PIL import Image

from cpm_jax.inference import single_person_rates
from tests import images
from tests.conftest import ROOT, python_env, require_shared

LSPET = images.LSPET_ROOT / "images"


def predict(*args, timeout: float = 300) -> tuple[int, str, str, float]:
    """(exit status, stdout, stderr, peak RSS in MB) of `python -m cpm_jax.predict --pretrained
    lspet_cpu ARGS`: the peak of that process alone (os.wait4), not of the test's other children.
    No persistent compilation cache, so that every run compiles as a user's first run does."""
    env = python_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, "-m", "cpm_jax.predict", "--pretrained", "lspet_cpu",
                                    *map(str, args)], stdout=out, stderr=err, env=env, cwd=ROOT)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read(), err.read(), usage.ru_maxrss / 1024     # Linux: KiB


def joints(entry: dict) -> np.ndarray:
    return np.array([[j["x"], j["y"]] for j in entry["joints"]])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB: Linux")
def test_a_large_photo_costs_no_more_memory_and_is_answered_in_its_own_pixels(tmp_path):
    """An 8000x6000 photo took 4.4 GB (a 1000x750 one 1.1 GB): every picture panel drew it at
    full size. Now a JPEG is decoded at 1/4, a PNG resized as decoded, and the picture drawn from
    the image the network saw."""
    source = LSPET / "im00061.jpg"
    require_shared([source], "a real LSPET photo (shared/datasets/lspet/images)")
    with Image.open(source) as photo:
        photo = photo.convert("RGB")
        photo.resize((848, 1024), Image.Resampling.BICUBIC).save(tmp_path / "normal.jpg", quality=92)
        large = photo.resize((3392, 4096), Image.Resampling.BICUBIC)                  # 14 Mpx
        large.save(tmp_path / "large.jpg", quality=92)
        large.save(tmp_path / "large.png", compress_level=1)
    reports, peaks = {}, {}
    for name in ("normal.jpg", "large.jpg", "large.png"):
        status, out, err, peaks[name] = predict("--scales", "1", "--out", tmp_path / f"out_{name}", tmp_path / name)
        assert status == 0, err[-3000:]
        reports[name] = json.loads(out)["images"][0]
    normal = joints(reports["normal.jpg"])
    cell = 8 / reports["normal.jpg"]["base_factor"]         # one network cell, in the normal photo's px
    for name in ("large.jpg", "large.png"):
        assert peaks[name] <= 1.5 * peaks["normal.jpg"], peaks
        assert (reports[name]["width"], reports[name]["height"]) == (3392, 4096)
        big = joints(reports[name])
        assert ((big >= 0) & (big <= [3391, 4095])).all(), big
        # The same person 4x larger: the normal photo's joints x 4 (continuous px), each within
        # one network cell (the reduced decode is not the normal photo's pixels exactly).
        apart = np.hypot(*((big + 0.5) / 4 - 0.5 - normal).T)
        assert (apart <= cell).all(), (name, apart, cell)
        with Image.open(reports[name]["picture"]) as picture:
            assert picture.size[0] * picture.size[1] <= 3000 * 600


def test_a_truncated_large_jpeg_is_named_in_one_line(tmp_path):
    data = images.encode(images.gradient(1500, 2000), "JPEG", quality=95)
    broken = images.write(tmp_path / "cut.jpg", data[:len(data) // 2])
    status, out, err, _ = predict("--out", tmp_path / "out", broken)
    assert status == 1 and out == "", err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert f"predict: error: {broken}: cannot decode the image: image file is truncated" in lines[0]
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def two_people(path) -> tuple[str, int]:
    """(the JPEG of two LSPET photos pasted side by side at one height, the left one's width)."""
    with Image.open(LSPET / "im00901.jpg") as a, Image.open(LSPET / "im02451.jpg") as b:
        a, b = (np.asarray(im.convert("RGB")) for im in (a, b))
    both = single_person_rates.side_by_side(a, b)
    Image.fromarray(both).save(path, quality=95)
    return str(path), round(a.shape[1] * both.shape[0] / a.shape[0])


def test_two_people_get_one_warning_line_and_one_person_none(tmp_path):
    alone = LSPET / "im00901.jpg"
    require_shared([alone, LSPET / "im02451.jpg"], "real LSPET photos (shared/datasets/lspet/images)")
    pair, left_width = two_people(tmp_path / "two people.jpg")
    status, out, err, _ = predict("--out", tmp_path / "out", pair, alone)
    assert status == 0, err[-3000:]
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 1, err[-3000:]
    assert warned[0].startswith(f"predict: warning: {pair}: may not show one person (")
    assert "single-person" in warned[0] and "--center X,Y --scale PX" in warned[0]
    two, one = json.loads(out)["images"]
    assert two["warnings"] == [warned[0].split(f"{pair}: ", 1)[1]] and one["warnings"] == []
    assert one["single_person"]["mean_belief"] > two["single_person"]["mean_belief"]
    # Pointed at the left person (about as tall as the photo), the model sees one person; the
    # same centre and scale in a photo of no one (a colour gradient) get the warning's other advice.
    nobody = images.write_jpeg(tmp_path / "nobody.jpg", images.gradient(400, 300))
    height = two["height"]
    status, out, err, _ = predict("--out", tmp_path / "out", "--center", f"{left_width / 2},{height / 2}",
                                  "--scale", height, pair, nobody)
    assert status == 0, err[-3000:]
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith(f"predict: warning: {nobody}: may not show one person ("), err
    assert warned[0].endswith("the model is single-person; check that --center X,Y --scale PX point at one person")
    pointed, empty = json.loads(out)["images"]
    assert pointed["warnings"] == [] and (joints(pointed)[:, 0] < left_width).all()
    assert empty["warnings"] == [warned[0].split(f"{nobody}: ", 1)[1]]
