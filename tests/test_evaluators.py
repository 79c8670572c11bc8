"""The evaluators that training, `evaluate run` and the sweep share, and the one-record promise:
registering a dataset record is all that train, evaluate run, evaluate score and predict need."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cpm_jax import evaluate, predict
from cpm_jax.evaluation import evaluators, metrics, scoring
from cpm_jax.training import trainer
from data_pipelines import lsp, registry, skeleton
from tests import images
from tests.conftest import ROOT, python_env, tiny_config


def test_crop_evaluator_scores_joints_in_original_image_pixels():
    """A stand-in network that always answers "the crop's centre" must come out, for every
    example and stage, at the record's person centre in ORIGINAL pixels (the canonical crop is
    centred there), and the PCK must be the one worked out here from the records alone."""
    config = tiny_config()
    config.data.num_heldout = 5
    evaluator = evaluators.CropEvaluator(config)
    size, stages, parts = config.model.input_size, config.model.num_stages, config.model.num_parts
    centre = (size - 1) / 2.0

    def crop_centre(variables, batch):
        d, b = batch["image"].shape[:2]
        return np.full((d, b, stages, parts, 2), centre, np.float32), np.ones((d, b, stages, parts), np.float32)

    evaluator._predict = crop_centre
    result = evaluator.run(variables=None)

    source = registry.open_split(config.data, "heldout")
    records = [source.load(i) for i in range(5)]
    want = np.stack([r["center"] for r in records])
    predictions = result.predictions
    assert predictions.pred.shape == (5, stages, parts, 2) and result.stages == (1, 2)
    np.testing.assert_allclose(predictions.pred, np.broadcast_to(want[:, None, None], (5, stages, parts, 2)),
                               atol=1e-3)
    np.testing.assert_array_equal(predictions.index, np.arange(5))

    hits = counted = 0
    a, b = skeleton.LSP.torso_indices
    for r, c in zip(records, want):
        labelled = r["visibility"] > 0
        if not (labelled[a] and labelled[b]):
            continue
        torso = np.hypot(*(r["joints"][a] - r["joints"][b]))
        close = np.hypot(*(r["joints"] - c).T) <= 0.2 * torso
        hits += int((close & labelled).sum())
        counted += int(labelled.sum())
    assert counted > 0
    assert result.label == "PCK@0.2" and result.metric == "labelled"
    assert result.totals == [pytest.approx(hits / counted)] * stages
    assert result.per_stage[0]["counted"] == counted


def test_mean_pose_baseline_is_the_training_crops_mean_in_every_crop():
    """The baseline's pose, mapped back into each held-out crop, is the mean of the training
    crops' labelled joints worked out here; its score is the metric of that prediction."""
    config = tiny_config()
    config.data.num_heldout = 5
    baseline = evaluators.MeanPoseEvaluator(config, fit_count=12)
    crops = [b for b in evaluators.canonical_crops(config, "train", 12)]
    joints = np.concatenate([b["joints"] for b in crops])
    labelled = np.concatenate([b["visibility"] for b in crops]) > 0
    want = np.nansum(np.where(labelled[..., None], joints, np.nan), 0) / labelled.sum(0)[:, None]
    np.testing.assert_allclose(baseline.mean_pose(), want, rtol=1e-6)

    result = baseline.run()
    held = np.concatenate([b["crop_to_image"] for b in evaluators.canonical_crops(config, "heldout", 5)])
    inverse = np.linalg.inv(np.concatenate([held, np.tile([[[0, 0, 1]]], (5, 1, 1))], 1))[:, :2]
    back = np.einsum("bij,bpj->bpi", inverse[..., :2], result.predictions.pred[:, 0]) + inverse[:, None, :, 2]
    np.testing.assert_allclose(back, np.broadcast_to(want, back.shape), atol=1e-3)
    assert result.stages == (0,) and len(result.predictions) == 5
    p = result.predictions
    expected = metrics.score(registry.get("synthetic").metric, p.pred[:, 0], p.gt, None,
                                     p.visibility > 0, p.head_box)
    assert result.totals == [pytest.approx(expected["total"])] and 0.0 <= result.totals[0] < 1.0


def test_mean_pose_through_the_cli():
    command = [sys.executable, "-m", "cpm_jax.evaluate", "mean_pose", "--config", "tests/tiny_experiment.py",
               "--count", "3", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["num_examples"] == 3 and 0.0 <= report["total"] <= 1.0 and "wrist" in report["parts"]
    result = subprocess.run(command + ["--config.data.heldout_every=2"], capture_output=True, text=True,
                            env=python_env(), cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "config.data.heldout_every" in result.stderr, result.stderr[-2000:]


@pytest.fixture
def toy_lsp(tmp_path, monkeypatch):
    """A throw-away dataset record "toy": LSP's layout written here (2000 images, 3 JPEG sizes),
    scored as the LSP benchmark, registered only for this test."""
    root = images.lsp_of_three_photos(tmp_path / "toy", seed=1, linked=range(2000))
    record = registry.Dataset("toy", skeleton.LSP, ("train", "test"), "test",
                              lambda data, split: lsp.read(str(root), "lsp", split, "toy"), None,
                              benchmark="lsp", person_rule="image")
    monkeypatch.setitem(registry.DATASETS, "toy", record)
    return root


def test_one_registered_record_is_enough_for_every_tool(toy_lsp, tmp_path):
    config = tiny_config()
    config.data.dataset = "toy"
    config.data.num_heldout = 3
    config.training.num_steps = 2
    config.training.num_visualized = 1
    workdir = str(tmp_path / "run")

    report = trainer.train_and_evaluate(config, workdir)
    assert report["dataset"] == "toy" and report["split"] == "test" and report["num_examples"] == 3
    assert report["metric"] == "PCK@0.2" and len(report["pck@0.2_per_stage"]) == 2

    run = evaluate.run_workdir(config, workdir, count=3, stages="last", out=str(tmp_path / "toy.npz"))
    assert run["benchmark"] == "lsp" and run["num_examples"] == 3 and run["procedure"]["person"] == "image"
    scored, _ = scoring.score_files("lsp", str(toy_lsp / "joints.mat"), run["per_stage"][0]["predictions"],
                                    allow_subset=True)
    assert scored["num_examples"] == 3
    assert scored["total"] == pytest.approx(run["per_stage"][0]["total"])

    photo = str(toy_lsp / "source2.jpg")
    found = predict.predict_images(workdir, [photo], out=str(tmp_path / "png"), log=lambda line: None)
    assert found["dataset"] == "toy"
    xy = np.array([[j["x"], j["y"]] for j in found["images"][0]["joints"]])
    assert xy.shape == (14, 2) and ((xy >= 0) & (xy <= [99, 119])).all()
    assert os.path.isfile(found["images"][0]["picture"])


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset; known: synthetic, lsp, lspet"):
        registry.get("lsp_extended")
