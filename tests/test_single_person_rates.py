"""`python -m cpm_jax.evaluate single_person`, what predict's one-person warning is tuned from: on
the shipped demo model's held-out synthetic figures it fires on fewer single figures than on
pairs pasted side by side, and the rates it prints are those of `single_person.check` on the
same images; which photos the default placement fits; the signs agree with the warning's words."""
import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from cpm_jax.evaluation import single_person
from cpm_jax.inference import single_person_rates
from tests.conftest import ROOT, python_env


def evaluate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpm_jax.evaluate", "single_person", *map(str, args)],
                          capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=300)


def test_pairs_of_people_are_warned_about_more_often_than_one_person():
    result = evaluate("--pretrained", "synthetic", "--count", 6, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["counts"] == {"single": 6, "pair": 3}
    single, pair = report["rates"]["single"], report["rates"]["pair"]
    assert single["warning"] < pair["warning"]
    assert single["mean_belief_percentiles"]["50"] > pair["mean_belief_percentiles"]["50"]
    for rates, count in ((single, 6), (pair, 3)):
        assert rates["warning"] >= max(rates["weak"], rates["two_peaks"], rates["long_limbs"])
        assert all(round(rates[s] * count, 6) == int(round(rates[s] * count)) for s in ("weak", "warning"))
    assert report["thresholds"]["weak_mean_belief"] == single_person.WEAK_MEAN_BELIEF


@pytest.mark.parametrize("args, named", [
    (["--pretrained", "no_such_model"], "no_such_model"),
    (["--pretrained", "synthetic", "--data_path", "/data/lspet"], "--data_path /data/lspet: dataset 'synthetic' reads no files"),
])
def test_an_unknown_model_or_a_data_path_for_no_files_is_one_line(args, named):
    result = evaluate(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert named in result.stderr.strip().splitlines()[-1]


DATA = ml_collections.ConfigDict({"person_height": 0.64, "dataset": "lsp"})


@pytest.mark.parametrize("scale, offset, expected", [
    (None, 0.0, True),          # exactly the default placement
    (1.4, 0.0, True), (1 / 1.4, 0.1, True),
    (1.6, 0.0, False),          # the person much smaller than the default assumes
    (1 / 1.6, 0.0, False),      # much larger
    (None, 0.2, False),         # well off the image centre
])
def test_a_photo_fits_the_default_placement_when_size_and_centre_agree(scale, offset, expected):
    height, width, size = 300, 200, 128
    default_scale = DATA.person_height * height / 0.8         # the LSP rule's zoom as a record scale
    record = {"scale": default_scale * (scale or 1.0),
              "center": ((width - 1) / 2 + offset * height, (height - 1) / 2)}
    assert single_person_rates.fits(record, height, width, DATA, size) is expected


def test_two_photos_side_by_side_share_the_taller_height():
    a, b = np.zeros((40, 30, 3), np.uint8), np.full((20, 10, 3), 200, np.uint8)
    both = single_person_rates.side_by_side(a, b)
    assert both.shape == (40, 30 + 20, 3) and both[:, :30].max() == 0 and both[:, 30:].min() > 150


def test_each_sign_is_a_reason_and_no_sign_no_warning():
    calm = single_person.Evidence(0.5, ("head",), ("a-b",))
    assert not any(calm.signs().values()) and calm.reasons() == []
    loud = single_person.Evidence(0.1, tuple("abcd"), tuple("wxyz"))
    assert all(loud.signs().values()) and len(loud.reasons()) == 3
