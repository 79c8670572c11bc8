"""`python -m cpm_jax.evaluate score` end to end on annotation files the tests write in the official
structures, with predictions = ground truth + known errors; expected scores from the definitions."""
import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from cpm_jax import errors
from cpm_jax.evaluation import prediction_files, scoring
from data_pipelines import skeleton
from tests import mat_files
from tests.conftest import ROOT, python_env

L, F = skeleton.LSP.index, skeleton.FLIC.index
GROUPS = {"head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cpm_jax.evaluate", *map(str, args)],
                          capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=120)


# ------------------------------------------------------------------------------------------- LSP

def lsp_files(tmp_path, n_predictions=1000):
    """joints.mat (3 x 14 x 2000, 1-based, random visibility flags) and a release-format prediction
    file for images 1001-2000: each joint moved by f x its image's torso, f from a fixed pattern."""
    rng = np.random.default_rng(0)
    labels = np.zeros((3, 14, 2000))
    labels[:2] = rng.uniform(1, 150, (2, 14, 2000))
    labels[2] = rng.integers(0, 2, (14, 2000))                 # ignored by LSP PCK
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": labels})
    gt = labels[:2, :, 1000:].transpose(2, 1, 0)              # (1000, 14, 2), 1-based
    torso = np.linalg.norm(gt[:, L["l_shoulder"]] - gt[:, L["r_hip"]], axis=-1)
    factors = np.array([0.0, 0.05, 0.19, 0.21, 0.5, 0.1, 0.3])[(np.arange(1000)[:, None] * 3 +
                                                             np.arange(14)[None]) % 7]
    angle = rng.uniform(0, 2 * np.pi, (1000, 14))
    offset = (factors * torso[:, None])[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    pred = gt + offset
    scipy.io.savemat(tmp_path / "pred.mat", {"prediction_all": pred[:n_predictions].transpose(1, 2, 0)})
    # The definition, joint by joint.
    hits = np.array([[math.hypot(*(pred[i, j] - gt[i, j])) <= 0.2 * math.dist(gt[i, L["l_shoulder"]],
                                                                              gt[i, L["r_hip"]])
                      for j in range(14)] for i in range(1000)])
    return tmp_path / "joints.mat", tmp_path / "pred.mat", hits, pred, gt


def test_lsp_release_file_scores_the_known_errors(tmp_path):
    annotations, predictions, hits, _, _ = lsp_files(tmp_path)
    expected_total = 100 * hits.sum() / 14000
    assert expected_total == pytest.approx(100 * 4 / 7, abs=0.1)      # 0, .05, .19, .1 of 7 pass
    plot = tmp_path / "out" / "curve.png"
    result = cli("score", "--dataset", "lsp", "--annotations", annotations, "--predictions",
                 predictions, "--json", "--plot", plot)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["total"] == pytest.approx(expected_total)
    assert report["joints"] == pytest.approx({n: 100 * hits[:, j].mean()
                                              for j, n in enumerate(skeleton.LSP.joint_names)})
    assert set(report["parts"]) == GROUPS
    assert report["parts"]["head"] == pytest.approx(50 * (hits[:, L["head_top"]].mean() + hits[:, L["neck"]].mean()))
    assert report["parts"]["wrist"] == pytest.approx(50 * (hits[:, L["r_wrist"]].mean() + hits[:, L["l_wrist"]].mean()))
    assert report["format"] == "release-lsp" and report["num_examples"] == 1000
    assert report["num_joints"] == 14000 and report["threshold"] == 0.2
    assert report["curve"]["total"][-1] == pytest.approx(expected_total)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"] == str(plot)

    # A table at another threshold (0.15: no error factor lies on it).
    table = cli("score", "--dataset", "lsp", "--annotations", annotations, "--predictions", predictions,
                "--threshold", "0.15")
    assert table.returncode == 0, table.stderr
    _, _, _, pred, gt = lsp_files(tmp_path)
    torso = [math.dist(g[L["l_shoulder"]], g[L["r_hip"]]) for g in gt]
    at_015 = 100 * np.mean([[math.hypot(*(pred[i, j] - gt[i, j])) <= 0.15 * torso[i] for j in range(14)]
                            for i in range(1000)])
    assert at_015 != pytest.approx(expected_total)
    lines = table.stdout.splitlines()
    assert "PCK@0.15" in lines[0] and "Total" in lines[4]
    assert lines[5].rstrip().endswith(f"| {at_015:6.2f}")           # the paper's row, then the total


def test_cli_errors_name_the_file(tmp_path):
    annotations, _, _, _, _ = lsp_files(tmp_path, n_predictions=999)
    short = tmp_path / "pred.mat"
    result = cli("score", "--dataset", "lsp", "--annotations", annotations, "--predictions", short)
    assert result.returncode != 0
    assert str(short) in result.stderr and "999 predictions" in result.stderr and "1000" in result.stderr

    nan = np.ones((14, 2, 1000))
    nan[3, 0, 17] = np.nan
    scipy.io.savemat(tmp_path / "nan.mat", {"prediction_all": nan})
    (tmp_path / "pred.csv").write_text("1,2\n")
    (tmp_path / "broken.mat").write_bytes(b"\x00garbage" * 50)
    for predictions, message in ((tmp_path / "nan.mat", "NaN or infinite"),
                                 (tmp_path / "pred.csv", "unknown prediction format")):
        result = cli("score", "--dataset", "lsp", "--annotations", annotations, "--predictions", predictions)
        assert result.returncode != 0 and str(predictions) in result.stderr and message in result.stderr, \
            result.stderr
    result = cli("score", "--dataset", "lsp", "--annotations", tmp_path / "broken.mat", "--predictions",
                 short)
    assert result.returncode != 0 and f"{tmp_path / 'broken.mat'}: not a MATLAB .mat file" in result.stderr
    result = cli("score", "--dataset", "lsp", "--annotations", annotations)
    assert result.returncode != 0 and "predictions" in result.stderr      # required flag
    result = cli("nonsense")
    assert result.returncode != 0 and "unknown subcommand 'nonsense'" in result.stderr and "score" in result.stderr


def test_in_process_errors_name_the_file(tmp_path):
    annotations, predictions, _, _, _ = lsp_files(tmp_path)
    scipy.io.savemat(tmp_path / "wide.mat", {"prediction_all": np.ones((14, 3, 1000))})
    with pytest.raises(prediction_files.PredictionFileError, match="wide.mat.*14 x 3 x 1000"):
        scoring.score_files("lsp", str(annotations), str(tmp_path / "wide.mat"))
    scipy.io.savemat(tmp_path / "lspet.mat", {"joints": np.ones((14, 3, 50))})
    with pytest.raises(errors.DataError, match="lspet.mat: 'joints' is 14 x 3 x 50, the LSP Extended layout"):
        scoring.score_files("lsp", str(tmp_path / "lspet.mat"), str(predictions))
    with pytest.raises(errors.AnnotationError, match="lsp: unknown split 'valid'"):
        scoring.score_files("lsp", str(annotations), str(predictions), split="valid")
    with pytest.raises(prediction_files.PredictionFileError, match="pred.mat: is a release-lsp file"):
        scoring.score_files("flic", str(tmp_path / "examples.mat"), str(predictions))


def test_lsp_train_split_and_project_file_subsets(tmp_path):
    annotations, _, _, _, _ = lsp_files(tmp_path)
    labels = scipy.io.loadmat(annotations)["joints"]
    train_gt = labels[:2, :, :1000].transpose(2, 1, 0) - 1.0       # 0-based
    exact = prediction_files.write(str(tmp_path / "train.npz"), train_gt, "lsp", "train", 6)
    report, _ = scoring.score_files("lsp", str(annotations), exact, split="train")
    assert report["total"] == 100.0 and report["stage"] == 6
    with pytest.raises(errors.AnnotationError, match="train.npz: predictions of split 'train'"):
        scoring.score_files("lsp", str(annotations), exact)          # scored as test by default
    subset = prediction_files.write(str(tmp_path / "some.npz"), train_gt[[5, 7]] + (0.0, 1e6), "lsp",
                                    "train", 6, index=[5, 7])
    with pytest.raises(errors.AnnotationError, match="some.npz: predictions for 2 of the 1000"):
        scoring.score_files("lsp", str(annotations), subset, split="train")
    report, _ = scoring.score_files("lsp", str(annotations), subset, split="train", allow_subset=True)
    assert report["num_examples"] == 2 and report["total"] == 0.0


# ------------------------------------------------------------------------------------------ FLIC

def test_flic_examples_mat_with_release_predictions(tmp_path):
    rng = np.random.default_rng(1)
    examples, truth = [], []
    for k in range(12):
        parts = rng.uniform(1, 300, (9, 2))
        columns = {c: tuple(parts[j]) for j, c in enumerate((1, 2, 3, 4, 5, 6, 7, 10, 17))}
        if k == 4:
            del columns[3]                                   # l_wrist not annotated
        examples.append({"filepath": f"{k}.jpg", "coords": columns, "istest": int(k % 3 != 0)})
        if k % 3 != 0:
            truth.append((parts, 3 not in columns))
    mat_files.write_flic_examples(tmp_path / "examples.mat", examples)
    gt = np.array([p for p, _ in truth])                     # 1-based, the 8 test examples
    torso = np.linalg.norm(gt[:, F["l_shoulder"]] - gt[:, F["r_hip"]], axis=-1)
    pred = gt.copy()
    factors = np.array([0.1, 0.25, 0.2, 0.05, 0.3, 0.0, 0.15, 0.4])
    for i in range(8):
        pred[i, F["l_elbow"]] += (factors[i] * torso[i], 0.0)
        pred[i, F["r_wrist"]] += (0.0, factors[::-1][i] * torso[i])
        pred[i, F["nose"]] += 999.0
    pred[:, F["l_shoulder"]] += 50.0                          # the predicted torso is not used
    path = tmp_path / "flic_pred.mat"
    scipy.io.savemat(path, {"prediction_all": pred.transpose(1, 2, 0)})

    counted = {n: np.ones(8, bool) for n in ("l_elbow", "r_elbow", "l_wrist", "r_wrist")}
    counted["l_wrist"][[i for i, (_, missing) in enumerate(truth) if missing]] = False
    hits = {n: [math.hypot(*(pred[i, F[n]] - gt[i, F[n]])) <= 0.2 * torso[i] for i in range(8) if counted[n][i]]
            for n in counted}
    report, _ = scoring.score_files("flic", str(tmp_path / "examples.mat"), str(path))
    assert report["format"] == "release-flic" and report["num_examples"] == 8
    assert set(report["parts"]) == {"elbow", "wrist"} and set(report["joints"]) == set(counted)
    assert report["num_joints"] == 31
    assert report["total"] == pytest.approx(100 * sum(map(sum, hits.values())) / 31)
    assert report["joints"]["l_elbow"] == pytest.approx(100 * np.mean(hits["l_elbow"]))
    assert report["parts"]["wrist"] == pytest.approx(50 * (np.mean(hits["l_wrist"]) + np.mean(hits["r_wrist"])))
    short = tmp_path / "short.mat"
    scipy.io.savemat(short, {"prediction_all": pred[:7].transpose(1, 2, 0)})
    with pytest.raises(errors.AnnotationError, match=f"{short}: 7 predictions.*has 8 examples"):
        scoring.score_files("flic", str(tmp_path / "examples.mat"), str(short))


# ------------------------------------------------------------------------------------------ MPII

def mpii_person(rng, head, missing=()):
    """A person with the 16 points (1-based) less `missing` ids, and a head box."""
    points = [{"id": i, "x": float(rng.uniform(1, 400)), "y": float(rng.uniform(1, 400)), "is_visible": 1}
              for i in range(16) if i not in missing]
    return {"objpos": (200.0, 200.0), "scale": 2.0, "head": head, "points": points}


def expected_pckh(people, preds, a):
    """PCKh from the definition over (person dict, N x 16 x 2 row) pairs; 14 ids (no 6, 7)."""
    hits = counted = 0
    for person, row in zip(people, preds):
        x1, y1, x2, y2 = person["head"]
        size = 0.6 * math.hypot(x2 - x1, y2 - y1)
        for p in person["points"]:
            if p["id"] in (6, 7):
                continue
            counted += 1
            hits += math.hypot(row[p["id"], 0] - p["x"], row[p["id"], 1] - p["y"]) <= a * size
    return 100 * hits / counted, counted


def predictions_for(people, rng):
    """N x 16 x 2 id-order 1-based predictions: the truth plus errors of 0-0.8 head sizes."""
    preds = rng.uniform(1, 400, (len(people), 16, 2))
    for n, person in enumerate(people):
        x1, y1, x2, y2 = person["head"]
        size = 0.6 * math.hypot(x2 - x1, y2 - y1)
        for p in person["points"]:
            f = rng.uniform(0, 0.8)
            preds[n, p["id"]] = (p["x"] + f * size, p["y"])
    return preds


def test_mpii_release_validation_split_with_hdf5_predictions(tmp_path):
    rng = np.random.default_rng(2)
    images = [{"name": f"{i}.jpg", "people": [mpii_person(rng, (10, 10, 10 + 20 + i, 10 + 30 + p),
                                                             missing=(9,) if (i, p) == (1, 1) else ())
                                              for p in range(2)]} for i in range(5)]
    mat_files.write_mpii_release(tmp_path / "release.mat", images)
    valid = [(3, 2), (1, 1), (2, 2), (5, 1)]                         # 1-based, Tompson's order
    mat_files.write_tompson_validation(tmp_path / "detections.mat", valid)
    people = [images[i - 1]["people"][p - 1] for i, p in valid]
    preds = predictions_for(people, rng)
    preds[:, 6:8] = 1e6                                               # pelvis, thorax: not scored
    with h5py.File(tmp_path / "preds.h5", "w") as f:
        f.create_dataset("preds", data=preds)
    expected, counted = expected_pckh(people, preds, 0.5)
    assert counted == 4 * 14 - 1
    result = cli("score", "--dataset", "mpii", "--annotations", tmp_path / "release.mat", "--predictions",
                 tmp_path / "preds.h5", "--split", "valid", "--mpii_validation", tmp_path / "detections.mat",
                 "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["metric"] == "PCKh" and report["threshold"] == 0.5
    assert report["total"] == pytest.approx(expected) and report["num_joints"] == counted
    assert set(report["parts"]) == GROUPS and len(report["joints"]) == 14
    at_01, _ = expected_pckh(people, preds, 0.1)
    report01, _ = scoring.score_files("mpii", str(tmp_path / "release.mat"), str(tmp_path / "preds.h5"),
                                       threshold=0.1, mpii_validation=str(tmp_path / "detections.mat"))
    assert report01["total"] == pytest.approx(at_01) and report01["split"] == "valid"
    # train: the other six people, in release order.
    train = [images[i]["people"][p] for i in range(5) for p in range(2) if (i + 1, p + 1) not in valid]
    train_preds = predictions_for(train, rng)
    np.save(tmp_path / "train.npy", train_preds)
    report, _ = scoring.score_files("mpii", str(tmp_path / "release.mat"), str(tmp_path / "train.npy"),
                                     split="train", mpii_validation=str(tmp_path / "detections.mat"))
    assert report["total"] == pytest.approx(expected_pckh(train, train_preds, 0.5)[0])
    with pytest.raises(errors.AnnotationError, match="release.mat: the full MPII release"):
        scoring.score_files("mpii", str(tmp_path / "release.mat"), str(tmp_path / "train.npy"))


def test_mpii_one_person_per_entry_file(tmp_path):
    rng = np.random.default_rng(3)
    people = [mpii_person(rng, (5, 5, 5 + 10 * (k + 1), 5 + 12 * (k + 1)),
                          missing=(0, 15) if k == 2 else ()) for k in range(6)]
    annolist = mat_files.mpii_release([{"name": f"{k}.jpg", "people": [p]} for k, p in enumerate(people)])["annolist"]
    scipy.io.savemat(tmp_path / "valid.mat", {"annolist": annolist})
    preds = predictions_for(people, rng)
    preds[2, 0] = 1e6                                       # not annotated: ignored
    scipy.io.savemat(tmp_path / "preds.mat", {"preds": preds})
    expected, counted = expected_pckh(people, preds, 0.5)
    report, curve = scoring.score_files("mpii", str(tmp_path / "valid.mat"), str(tmp_path / "preds.mat"))
    assert report["format"] == "mpii-mat" and report["split"] is None and report["num_examples"] == 6
    assert report["total"] == pytest.approx(expected) and report["num_joints"] == counted == 6 * 14 - 2
    assert curve["thresholds"][-1] == 0.5
    assert report["joints"]["r_ankle"] == pytest.approx(
        100 * np.mean([math.hypot(preds[k, 0, 0] - people[k]["points"][0]["x"],
                                  preds[k, 0, 1] - people[k]["points"][0]["y"]) <= 0.5 * 0.6 *
                       math.hypot(10 * (k + 1), 12 * (k + 1)) for k in range(6) if k != 2]))
    with pytest.raises(errors.AnnotationError, match="valid.mat: a one-person-per-entry file"):
        scoring.score_files("mpii", str(tmp_path / "valid.mat"), str(tmp_path / "preds.mat"), split="valid")
    two = mat_files.mpii_release([{"name": "a.jpg", "people": people[:2]}])["annolist"]
    scipy.io.savemat(tmp_path / "two.mat", {"annolist": two})
    with pytest.raises(errors.DataError, match=r"two.mat: annolist\(1\) has 2 annorect"):
        scoring.score_files("mpii", str(tmp_path / "two.mat"), str(tmp_path / "preds.mat"))
