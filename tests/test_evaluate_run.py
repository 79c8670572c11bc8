"""`python -m cpm_jax.evaluate run` end to end: a tiny CPM trained here for 2 steps on the synthetic
figures, its multi-scale test over the synthetic held-out split and over an LSP test split written
here in the official layout; the project prediction files it writes are read back by `evaluate
score`, which must agree with the metric `run` printed."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cpm_jax import evaluate
from cpm_jax.evaluation import evaluators, prediction_files
from cpm_jax.training import checkpointing
from data_pipelines import registry, skeleton
from tests import images
from tests.conftest import ROOT, python_env, tiny_config


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cpm_jax.evaluate", *map(str, args)],
                          capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=300)


def last_json(result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
    """A 2-stage tiny CPM after 2 training steps (accuracy is irrelevant here)."""
    return tiny_workdir


@pytest.fixture(scope="module")
def lsp_root(tmp_path_factory):
    """An LSP directory (joints.mat 3 x 14 x 2000, 1-based) whose test images 1001-2000 are three
    JPEGs of different sizes, linked in turn; joints drawn inside each image."""
    return images.lsp_of_three_photos(tmp_path_factory.mktemp("lsp")), images.LSP_PHOTO_SIZES


def test_synthetic_run_prints_one_metric_per_stage_and_writes_one_file_per_stage(workdir):
    result = cli("run", "--workdir", workdir, "--count", 3, "--scales", "0.8,1.2", "--batch_size", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["stage"])
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [r[0] for r in rows] == ["1", "2"]                  # one row per stage, the paper's 6c
    assert all(len(r) == 1 + 7 + 2 for r in rows)              # 7 part groups | total
    assert "evaluate run: 3/3 examples" in result.stderr         # the progress line
    for t in (1, 2):
        path = workdir / "predictions" / f"synthetic_heldout_stage{t}.npz"
        assert f"wrote {path}" in result.stdout
        with np.load(path) as f:
            assert f["joints"].shape == (3, 14, 2) and np.isfinite(f["joints"]).all()
            assert int(f["stage"]) == t and str(f["split"]) == "heldout"
            np.testing.assert_array_equal(f["index"], [0, 1, 2])
            assert f["peak"].shape == (3, 14)
            assert str(f["info_scales"]) == "0.8,1.2"


def test_lsp_run_files_are_scored_by_evaluate_score_with_the_same_result(workdir, lsp_root, tmp_path):
    root, sizes = lsp_root
    out = tmp_path / "preds.npz"
    report = last_json(cli("run", "--workdir", workdir, "--config.data.dataset=lsp",
                           f"--config.data.paths.lsp={root}", "--count", 4, "--scales", "0.9,1.1",
                           "--out", out, "--json"))
    assert report["dataset"] == "lsp" and report["split"] == "test" and report["num_examples"] == 4
    assert report["benchmark"] == "lsp" and report["metric"] == "PCK" and report["threshold"] == 0.2
    assert report["procedure"]["person"] == "image"          # the release's LSP rule
    assert [row["stage"] for row in report["per_stage"]] == [1, 2]
    for row in report["per_stage"]:
        path = str(tmp_path / f"preds_stage{row['stage']}.npz")
        assert row["predictions"] == path
        read = prediction_files.read(path, "lsp")
        assert read.info["stage"] == row["stage"] and read.info["split"] == "test"
        np.testing.assert_array_equal(read.index, np.arange(4))
        for i, joints in enumerate(read.joints):             # arg-max pixels of each original image
            w, h = sizes[(1000 + i) % 3]
            assert (joints >= 0).all() and (joints[:, 0] <= w - 1).all() and (joints[:, 1] <= h - 1).all()
        scored = last_json(subprocess.run(
            [sys.executable, "-m", "cpm_jax.evaluate", "score", "--dataset", "lsp", "--annotations",
             str(root / "joints.mat"), "--predictions", path, "--allow_subset", "--json"],
            capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=120))
        assert scored["total"] == pytest.approx(row["total"])
        assert scored["num_examples"] == 4 and scored["stage"] == row["stage"]


def test_an_experiment_config_must_describe_the_trained_network(workdir):
    report = last_json(cli("run", "--workdir", workdir, "--config", "tests/tiny_experiment.py",
                           "--count", 2, "--stages", "1", "--scales", "1", "--json",
                           "--out", workdir / "one.npz"))
    assert [row["stage"] for row in report["per_stage"]] == [1]
    assert os.path.isfile(workdir / "one.npz")               # one stage: exactly --out
    result = cli("run", "--workdir", workdir, "--config", "tests/tiny_experiment.py",
                 "--config.model.num_stages=3")
    assert result.returncode == 1
    assert "model.num_stages: 3 (checkpoint: 2)" in result.stderr and str(workdir) in result.stderr


@pytest.mark.parametrize("config", [[], ["--config", "tests/tiny_experiment.py"]])
def test_a_workdir_without_a_model_says_what_to_do(tmp_path, config):
    """No such directory, or one with neither config.json nor checkpoints/: check the path, train
    first or use --pretrained (--config cannot help); nothing is created."""
    fix = ("check the path, train a model there first (python -m cpm_jax.train --config EXPERIMENT.py --workdir {}), "
           "or evaluate a shipped model with --pretrained NAME (pretrained/*.npz)")
    (tmp_path / "empty").mkdir()
    for name, problem in (("missing", "no such directory"), ("empty", "not a training workdir (no config.json, "
                                                                        "no checkpoints/)")):
        where = tmp_path / name
        result = cli("run", "--workdir", where, *config)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (
            f"cpm_jax.evaluate: error: --workdir {where}: {problem}; {fix.format(where)}"), result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["empty"] and os.listdir(tmp_path / "empty") == []


def test_errors_name_the_workdir_or_the_problem(workdir, tmp_path):
    trained = tmp_path / "trained_elsewhere"      # checkpoints but no config.json: --config helps
    (trained / "checkpoints").mkdir(parents=True)
    result = cli("run", "--workdir", trained)
    assert result.returncode == 1
    assert f"{trained}/config.json" in result.stderr and "pass the experiment with --config" in result.stderr
    checkpointing.write_config(str(tmp_path / "untrained"), tiny_config())
    with pytest.raises(checkpointing.NoCheckpointError, match=str(tmp_path / "untrained")):
        evaluate.run_workdir(tiny_config(), str(tmp_path / "untrained"), count=1)
    assert not (tmp_path / "untrained" / "checkpoints").exists()      # nothing created
    with pytest.raises(ValueError, match="unknown split 'test'"):
        evaluate.run_workdir(tiny_config(), str(workdir), split="test")
    with pytest.raises(ValueError, match="stages 1..2"):
        evaluate.run_workdir(tiny_config(), str(workdir), stages="3", count=1)


def test_run_scores_datasets_without_a_benchmark_over_labelled_joints():
    """lspet / synthetic: LSP-style PCK over labelled joints of examples whose torso is labelled;
    mpii: PCKh with the head boxes the records carry."""
    gt = np.tile(np.arange(28, dtype=float).reshape(1, 14, 2) * 10, (2, 1, 1))
    pred = gt[:, None].repeat(2, 1).copy()
    pred[:, 1, 0] += 1000                                    # stage 2 misses joint 0 everywhere
    visibility = np.full((2, 14), 2)
    visibility[1, 5] = 0                                     # unlabelled: not counted
    boxes = np.full((2, 4), np.nan)
    predictions = evaluators.StagePredictions((1, 2), pred, np.ones((2, 2, 14)), gt, visibility, boxes,
                                              np.arange(2))
    lspet = registry.get("lspet")
    assert lspet.metric == "labelled"
    results = evaluators.score_stages(lspet, predictions)
    assert results[0]["total"] == 1.0 and results[0]["counted"] == 27
    assert results[1]["total"] == pytest.approx(25 / 27)
    # MPII: head boxes of 10 px diagonal x 0.6 = 6 px head size; the 1000 px miss fails, all else hits.
    boxed = dataclasses.replace(predictions, head_box=np.tile([0.0, 0.0, 6.0, 8.0], (2, 1)))
    mpii = evaluators.score_stages(registry.get("mpii"), boxed)
    assert mpii[0]["total"] == 1.0 and mpii[1]["total"] == pytest.approx(25 / 27)
    with pytest.raises(ValueError, match="normaliser"):               # no head box: an error, not a guess
        evaluators.score_stages(registry.get("mpii"), predictions)
    assert skeleton.LSP.num_joints == 14
