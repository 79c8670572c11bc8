"""A bad held-out image fails `train` at its start, not after the training: the held-out examples
are read once before the first step (with `data.skip_bad_examples` counted against
`data.max_skipped_fraction` as the evaluation counts them), and nothing is written to the
workdir. `show_data` with skipping names every example it skipped. Both through the command
line, on small LSPET layouts whose held-out people are every second one (data.heldout_every)."""
import subprocess
import sys

import pytest

from tests import images, train_cli
from tests.conftest import ROOT, python_env
from tests.test_train_failures import first_index, lspet_layout
from tests.train_cli import last_logged_step, overrides

START_S = 60      # a run that fails at its start ends within this (imports, restore, reading 8 images)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return train_cli.cache_dir(tmp_path_factory)


@pytest.mark.parametrize("skipping", [True, False])
def test_a_bad_held_out_image_fails_the_run_before_its_first_step(tmp_path, cache, skipping):
    root = lspet_layout(tmp_path / "lspet", 16, broken=(4,))        # held-out example 2 of 8 (0, 2, 4, ...)
    workdir = tmp_path / "workdir"
    args = overrides(data__dataset="lspet", data__eval_split="heldout", data__num_heldout=0,
                     **{"data.paths.lspet": root, "data.heldout_every": 2, "data.skip_bad_examples": skipping})
    with train_cli.running(train_cli.command(workdir, *args), cache, tmp_path, f"skip_{skipping}") as run:
        assert run.wait() == 1, run.log()[-3000:]
    log = run.log()
    print(f"exit 1 after {run.seconds:.1f} s: {log.strip().splitlines()[-1]}")
    assert run.seconds < START_S and last_logged_step(log) == 0 and "Traceback" not in log
    message = log.strip().splitlines()[-1]
    assert message.startswith("cpm_jax.train: error: ")
    bad = f"lspet example 2 ({root / images.image_name('lspet', 4)}): not a JPEG or PNG image"
    assert bad in message and "found reading the held-out examples before training" in message
    if skipping:   # 1 of 8 is more than the default bound, 0.1: the evaluation would have stopped
        assert f"heldout split of lspet (images in {root / 'images'}): 1 of the " in message
        assert "more than config.data.max_skipped_fraction = 0.1" in message
    else:
        assert "set config.data.skip_bad_examples = True to skip such examples" in message
    assert not (workdir / "config.json").exists() and train_cli.steps_on_disk(workdir) == []


def test_show_data_names_every_example_it_skips(tmp_path):
    index = first_index(40)                                        # read first: shown or skipped, whatever the prefetch
    root = lspet_layout(tmp_path / "lspet", 40, broken=(index,))
    args = [sys.executable, "-m", "cpm_jax.show_data", "--config", str(ROOT / "tests" / "tiny_experiment.py"),
            "--out", str(tmp_path / "out"), "--num", "2", "--config.data.dataset=lspet",
            f"--config.data.paths.lspet={root}", "--config.data.skip_bad_examples=True"]
    result = subprocess.run(args, capture_output=True, text=True, env=python_env(), timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if "skipped (config.data.skip_bad_examples)" in line]
    print("\n".join(skipped))
    assert len(skipped) == 1, result.stderr[-3000:]
    assert skipped[0].endswith(f"skipped (config.data.skip_bad_examples) lspet example {index} "
                               f"({root / images.image_name('lspet', index)}): not a JPEG or PNG image (it is text "
                               "beginning 'not an image')")
    assert len(result.stdout.split()) == 3                         # two examples and the overview
