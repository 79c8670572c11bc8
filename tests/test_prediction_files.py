"""Prediction files: every format round-trips into (N, P, 2) 0-based project-order joints, and every
bad file is an error naming it."""
import h5py
import numpy as np
import pytest
import scipy.io

from cpm_jax.evaluation import prediction_files as pf
from data_pipelines import skeleton
from data_pipelines.mpii import MPII_IDS

L = skeleton.LSP.index


def joints(n, p, seed=0):
    """0-based project-order joints with fractional coordinates."""
    return np.random.default_rng(seed).uniform(0, 400, (n, p, 2))


def test_release_lsp_14_x_2_x_n_1_based(tmp_path):
    truth = joints(5, 14)
    path = str(tmp_path / "pred_lsp.mat")
    # As the release writes it: prediction_all(part, xy, image), MATLAB 1-based pixels.
    release = np.zeros((14, 2, 5))
    for i in range(5):
        for j in range(14):
            release[j, 0, i] = truth[i, j, 0] + 1
            release[j, 1, i] = truth[i, j, 1] + 1
    scipy.io.savemat(path, {"prediction_all": release})
    assert pf.detect_format(path) == "release-lsp"
    read = pf.read(path, "lsp", expected_count=5)
    assert read.format == "release-lsp" and read.joints.shape == (5, 14, 2)
    np.testing.assert_allclose(read.joints, truth)
    with pytest.raises(pf.PredictionFileError, match="holds 5 predictions.*1000"):
        pf.read(path, "lsp", expected_count=1000)
    with pytest.raises(pf.PredictionFileError, match="release-lsp file.*not mpii"):
        pf.read(path, "mpii")


def test_release_flic_9_x_2_x_n(tmp_path):
    truth = joints(4, 9, seed=1)
    release = (truth + 1).transpose(1, 2, 0)
    release[skeleton.FLIC.index["r_wrist"], 0, 2] = 1001.0           # example 3, r_wrist x = 1000 (0-based)
    path = str(tmp_path / "pred_flic.mat")
    scipy.io.savemat(path, {"prediction_all": release})
    read = pf.read(path, "flic")
    assert read.format == "release-flic"
    assert read.joints[2, skeleton.FLIC.index["r_wrist"], 0] == 1000.0
    expected = truth.copy()
    expected[2, skeleton.FLIC.index["r_wrist"], 0] = 1000.0
    np.testing.assert_allclose(read.joints, expected)


def mpii_array(truth14, seed=3):
    """An N x 16 x 2 1-based id-order array for project-order 0-based joints; pelvis and thorax
    get unrelated values."""
    out = np.random.default_rng(seed).uniform(0, 400, (len(truth14), 16, 2))
    for j, mpii_id in enumerate(MPII_IDS):
        out[:, mpii_id] = truth14[:, j] + 1
    return out


def test_mpii_hdf5_maps_ids_to_project_joints(tmp_path):
    truth = joints(6, 14, seed=2)
    array = mpii_array(truth)
    array[4, 10] += (1000.0, 2000.0)          # MPII id 10 = r wrist, person 5
    array[1, 8] += (0.0, 500.0)               # id 8 = upper neck, person 2
    array[:, 6] = np.nan                      # pelvis: dropped, so its NaN does not matter
    path = str(tmp_path / "preds.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("preds", data=array)
    read = pf.read(path, "mpii", expected_count=6)
    assert read.format == "mpii-h5"
    expected = truth.copy()
    expected[4, L["r_wrist"]] += (1000.0, 2000.0)
    expected[1, L["neck"]] += (0.0, 500.0)
    np.testing.assert_allclose(read.joints, expected)
    moved = np.argwhere(np.abs(read.joints - truth).sum(-1) > 1)
    assert moved.tolist() == [[1, L["neck"]], [4, L["r_wrist"]]]


def test_mpii_npy_and_mat_and_matlab_v73(tmp_path):
    truth = joints(3, 14, seed=4)
    array = mpii_array(truth)
    np.save(tmp_path / "preds.npy", array)
    scipy.io.savemat(tmp_path / "preds.mat", {"preds": array})
    # MATLAB -v7.3: HDF5 after a 512-byte MATLAB header, arrays stored in reversed dimension order.
    v73 = str(tmp_path / "preds73.mat")
    with h5py.File(v73, "w", userblock_size=512) as f:
        f.create_dataset("preds", data=array.T)
    with open(v73, "r+b") as f:
        header = b"MATLAB 7.3 MAT-file, written by a test".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
        f.write(header)
    for name, fmt in (("preds.npy", "mpii-npy"), ("preds.mat", "mpii-mat"), ("preds73.mat", "mpii-mat")):
        read = pf.read(str(tmp_path / name), "mpii")
        assert read.format == fmt, name
        np.testing.assert_allclose(read.joints, truth, err_msg=name)


def test_project_file_round_trip(tmp_path):
    truth = joints(7, 14, seed=5)
    peak = np.random.default_rng(0).uniform(size=(7, 14)).astype(np.float32)
    path = pf.write(str(tmp_path / "run"), truth, "lsp+lspet", "test", 6, index=np.arange(7) + 3,
                    peak=peak, checkpoint="ckpt/1500")
    assert path.endswith(".npz")
    read = pf.read(path, "lsp")
    assert read.format == "project"
    np.testing.assert_array_equal(read.joints, truth)
    np.testing.assert_array_equal(read.index, np.arange(7) + 3)
    np.testing.assert_array_equal(read.peak, peak)
    assert read.info == {"dataset": "lsp+lspet", "split": "test", "stage": 6, "version": 1,
                         "checkpoint": "ckpt/1500"}
    flic = pf.write(str(tmp_path / "flic.npz"), joints(2, 9), "flic", "test", 3)
    assert pf.read(flic, "flic").joints.shape == (2, 9, 2)
    with pytest.raises(pf.PredictionFileError, match="flic.npz: holds predictions for dataset 'flic'"):
        pf.read(flic, "lsp")


def test_project_file_checks_its_metadata(tmp_path):
    good = joints(2, 14)
    wrong_order = pf.write(str(tmp_path / "order.npz"), good, "mpii", "valid", 1,
                           joint_names=tuple(reversed(skeleton.LSP.joint_names)))
    with pytest.raises(pf.PredictionFileError, match="order.npz: joint order"):
        pf.read(wrong_order, "mpii")
    np.savez(tmp_path / "other.npz", joints=good)
    with pytest.raises(pf.PredictionFileError, match="other.npz: not a cpm_jax.predictions file"):
        pf.read(str(tmp_path / "other.npz"), "lsp")
    path = pf.write(str(tmp_path / "v.npz"), good, "lsp", "test", 1)
    data = dict(np.load(path))
    data["version"] = np.int64(99)
    np.savez(tmp_path / "v.npz", **data)
    with pytest.raises(pf.PredictionFileError, match="v.npz: format version 99"):
        pf.read(path, "lsp")
    data["version"] = np.int64(1)
    data["joints"] = np.full((2, 14, 2), np.nan)
    np.savez(tmp_path / "v.npz", **data)
    with pytest.raises(pf.PredictionFileError, match="v.npz: 28 predicted joints are NaN"):
        pf.read(path, "lsp")
    with pytest.raises(ValueError, match="NaN"):
        pf.write(str(tmp_path / "nan.npz"), data["joints"], "lsp", "test", 1)


@pytest.mark.parametrize("fmt,benchmark,p", [("release-lsp", "lsp", 14), ("release-flic", "flic", 9),
                                              ("mpii-h5", "mpii", 14), ("mpii-npy", "mpii", 14),
                                              ("mpii-mat", "mpii", 14)])
def test_export_then_read(tmp_path, fmt, benchmark, p):
    truth = joints(5, p, seed=6)
    ext = {"release-lsp": ".mat", "release-flic": ".mat", "mpii-h5": ".h5", "mpii-npy": ".npy",
           "mpii-mat": ".mat"}[fmt]
    path = pf.export(str(tmp_path / f"out{ext}"), truth, fmt)
    read = pf.read(path, benchmark)
    assert read.format == fmt
    np.testing.assert_allclose(read.joints, truth)
    if fmt == "mpii-npy":     # pelvis and thorax: midpoints of the hips and of the shoulders (1-based)
        raw = np.load(path)
        np.testing.assert_allclose(raw[:, 6], (truth[:, L["r_hip"]] + truth[:, L["l_hip"]]) / 2 + 1)
        np.testing.assert_allclose(raw[:, 7], (truth[:, L["r_shoulder"]] + truth[:, L["l_shoulder"]]) / 2 + 1)


def test_bad_files_are_errors_naming_them(tmp_path):
    def fails(path, benchmark, match, **kw):
        with pytest.raises(pf.PredictionFileError, match=match) as info:
            pf.read(str(path), benchmark, **kw)
        assert str(info.value).startswith(str(path))

    scipy.io.savemat(tmp_path / "shape.mat", {"prediction_all": np.zeros((14, 3, 10))})
    fails(tmp_path / "shape.mat", "lsp", r"14 x 3 x 10; the release's files are 14 x 2 x N")
    fails(tmp_path / "shape.mat", "lsp", r"14 x 3 x 10; release-lsp is 14 x 2 x N", fmt="release-lsp")
    nan = np.ones((14, 2, 3))
    nan[5, 1, 2] = np.nan
    scipy.io.savemat(tmp_path / "nan.mat", {"prediction_all": nan})
    fails(tmp_path / "nan.mat", "lsp", "1 predicted joints are NaN or infinite .*row 3 of 3, l_ankle")
    np.save(tmp_path / "short.npy", np.zeros((4, 14, 2)))
    fails(tmp_path / "short.npy", "mpii", "4 x 14 x 2; MPII predictions are N x 16 x 2")
    (tmp_path / "pred.txt").write_text("1 2 3\n")
    fails(tmp_path / "pred.txt", "lsp", "unknown prediction format")
    scipy.io.savemat(tmp_path / "vars.mat", {"something": np.zeros(3)})
    fails(tmp_path / "vars.mat", "lsp", "unknown prediction format.*found: something")
    (tmp_path / "junk.mat").write_bytes(b"not a MATLAB file at all" * 10)
    fails(tmp_path / "junk.mat", "lsp", "not a MATLAB .mat file")
    (tmp_path / "junk.h5").write_bytes(b"not HDF5")
    fails(tmp_path / "junk.h5", "mpii", "cannot read as an HDF5 file")
    with h5py.File(tmp_path / "noprd.h5", "w") as f:
        f.create_dataset("predictions", data=np.zeros((2, 16, 2)))
    fails(tmp_path / "noprd.h5", "mpii", "no dataset 'preds' .found: predictions")
    fails(tmp_path / "missing.mat", "lsp", "no such file")
    fails(tmp_path / "shape.mat", "lsp", "unknown prediction format 'csv'", fmt="csv")


def test_format_override_reads_an_odd_extension(tmp_path):
    truth = joints(2, 14)
    path = tmp_path / "preds.dat"
    with open(path, "wb") as f:
        np.save(f, mpii_array(truth))
    with pytest.raises(pf.PredictionFileError, match="unknown prediction format"):
        pf.read(str(path), "mpii")
    np.testing.assert_allclose(pf.read(str(path), "mpii", fmt="mpii-npy").joints, truth)
