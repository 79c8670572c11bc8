"""The scored examples of official annotation files (cpm_jax/evaluation/ground_truth.py), on small
files written here in the official structures; expectations written out by hand."""
import inspect
import re

import numpy as np
import pytest
import scipy.io

from cpm_jax.errors import AnnotationError, BadExampleError, DataError
from cpm_jax.evaluation import ground_truth
from data_pipelines import skeleton
from tests import images, mat_files

L = skeleton.LSP.index


def write_lsp(tmp_path, n=2000):
    rng = np.random.default_rng(0)
    joints = rng.uniform(1, 100, (n, 14, 2)).round(1)        # 1-based
    flags = rng.integers(0, 2, (n, 14))
    return images.write_joints_mat(tmp_path / "joints.mat", joints, flags, "lsp"), joints


def test_lsp_splits_are_images_1001_2000_and_1_1000(tmp_path):
    path, joints = write_lsp(tmp_path)
    test = ground_truth.load_annotations("lsp", path)
    assert (test.benchmark, test.split, len(test)) == ("lsp", "test", 1000)
    np.testing.assert_array_equal(test.joints, joints[1000:] - 1)
    assert test.counted.all() and test.head_boxes is None       # every LSP joint counts
    assert test.where[0] == "image 1001" and test.where[-1] == "image 2000"
    train = ground_truth.load_annotations("lsp", path, "train")
    np.testing.assert_array_equal(train.joints, joints[:1000] - 1)
    assert train.description == "LSP train images 1-1000"
    subset = train.take(np.array([3, 1]))
    np.testing.assert_array_equal(subset.joints, joints[[3, 1]] - 1)
    assert subset.where == ("image 4", "image 2") and subset.description.endswith("2 of 1000 examples")


def test_lsp_files_that_cannot_be_the_benchmark(tmp_path):
    lspet = images.write_joints_mat(tmp_path / "lspet.mat", np.ones((50, 14, 2)), np.ones((50, 14)), "lspet")
    with pytest.raises(DataError, match=r"lspet\.mat: 'joints' is 14 x 3 x 50, the LSP Extended layout "
                                        r".*the LSP benchmark's annotations are LSP's joints\.mat"):
        ground_truth.load_annotations("lsp", lspet)
    short = images.write_joints_mat(tmp_path / "short.mat", np.ones((40, 14, 2)), np.ones((40, 14)), "lsp")
    with pytest.raises(AnnotationError, match=r"short\.mat: 'joints' is 3 x 14 x 40; LSP's joints.mat is 3 x 14 x 2000"):
        ground_truth.load_annotations("lsp", short)
    path, joints = write_lsp(tmp_path)
    labels = scipy.io.loadmat(path)["joints"]
    labels[0, L["l_wrist"], 1500] = np.nan
    scipy.io.savemat(tmp_path / "nan.mat", {"joints": labels})
    with pytest.raises(AnnotationError, match=r"nan\.mat: image 1501 joint l_wrist is not a number"):
        ground_truth.load_annotations("lsp", str(tmp_path / "nan.mat"))


def test_flic_keeps_the_files_labels_and_counts_the_labelled_parts(tmp_path):
    F = skeleton.FLIC.index
    shoulder_right_of_left = {1: (100.0, 50.0), 4: (200.0, 50.0), 2: (90.0, 80.0), 5: (210.0, 80.0),
                              3: (80.0, 110.0), 6: (220.0, 110.0), 7: (120.0, 150.0), 10: (180.0, 150.0)}
    mat_files.write_flic_examples(tmp_path / "examples.mat", [
        {"filepath": "a.jpg", "coords": shoulder_right_of_left, "istest": 1},      # no nose
        {"filepath": "b.jpg", "coords": shoulder_right_of_left},                   # train
        {"filepath": "c.jpg", "coords": {**shoulder_right_of_left, 17: (150.0, 20.0)}, "istest": 1}])
    test = ground_truth.load_annotations("flic", str(tmp_path / "examples.mat"))
    assert len(test) == 2 and test.where == ("examples(1)", "examples(3)")
    # Not swapped (the training reader would swap left and right here).
    np.testing.assert_array_equal(test.joints[0, F["r_shoulder"]], (199.0, 49.0))
    np.testing.assert_array_equal(test.counted[:, F["nose"]], [False, True])
    assert test.counted[:, F["l_wrist"]].all()
    assert len(ground_truth.load_annotations("flic", str(tmp_path / "examples.mat"), "train")) == 1
    no_torso = {k: v for k, v in shoulder_right_of_left.items() if k != 10}         # no r_hip
    mat_files.write_flic_examples(tmp_path / "torso.mat", [{"filepath": "a.jpg", "coords": no_torso, "istest": 1}])
    with pytest.raises(AnnotationError, match=r"torso\.mat: examples\(1\) has no ground-truth l_shoulder or r_hip"):
        ground_truth.load_annotations("flic", str(tmp_path / "torso.mat"))
    mat_files.write_flic_examples(tmp_path / "none.mat", [{"filepath": "a.jpg", "coords": no_torso}])
    with pytest.raises(AnnotationError, match=r"none\.mat: no example has istest set"):
        ground_truth.load_annotations("flic", str(tmp_path / "none.mat"))


def person(head, ids=(9, 12, 13)):
    return {"objpos": (50.0, 60.0), "scale": 1.0, "head": head,
            "points": [{"id": i, "x": 10.0 + i, "y": 20.0 + i, "is_visible": 1} for i in ids]}


def test_mpii_release_splits_carry_head_boxes(tmp_path):
    images_ = [{"name": "a.jpg", "people": [person((1, 2, 11, 22)), person((3, 4, 13, 24))]},
               {"name": "b.jpg", "people": [person((5, 6, 15, 26))]}]
    release = mat_files.write_mpii_release(tmp_path / "release.mat", images_)
    detections = mat_files.write_tompson_validation(tmp_path / "detections.mat", [(2, 1), (1, 2)])
    valid = ground_truth.load_annotations("mpii", release, mpii_validation=detections)
    assert valid.split == "valid" and valid.where == ("annolist(2).annorect(1)", "annolist(1).annorect(2)")
    np.testing.assert_array_equal(valid.head_boxes, [(4, 5, 14, 25), (2, 3, 12, 23)])
    assert valid.description == "MPII validation people of detections.mat"
    np.testing.assert_array_equal(valid.counted.sum(1), [3, 3])
    np.testing.assert_array_equal(valid.joints[0, L["head_top"]], (18, 28))      # id 9, 1-based (19, 29)
    train = ground_truth.load_annotations("mpii", release, "train", detections)
    assert train.where == ("annolist(1).annorect(1)",)
    everyone = ground_truth.load_annotations("mpii", release, "train")
    assert len(everyone) == 3 and everyone.description == "MPII training people"
    with pytest.raises(AnnotationError, match=r"release\.mat: the full MPII release: choose"):
        ground_truth.load_annotations("mpii", release)
    with pytest.raises(AnnotationError, match=r"--split valid needs --mpii_validation"):
        ground_truth.load_annotations("mpii", release, "valid")
    missing_box = mat_files.write_mpii_release(tmp_path / "nobox.mat", [
        {"name": "a.jpg", "people": [{k: v for k, v in person(None).items() if k != "head"}]}])
    with pytest.raises(AnnotationError, match=r"nobox\.mat: annolist\(1\)\.annorect\(1\) has annotated "
                                              r"joints but no head box"):
        ground_truth.load_annotations("mpii", missing_box, "train")


def test_mpii_one_person_per_entry_files(tmp_path):
    annolist = mat_files.mpii_release([
        {"name": "a.jpg", "people": [person((1, 2, 11, 22))]},
        {"name": "b.jpg", "people": [{"objpos": (1.0, 1.0), "scale": 1.0}]},      # no points
        {"name": "c.jpg", "people": [person((5, 6, 15, 26), ids=(0,))]}])["annolist"]
    scipy.io.savemat(tmp_path / "valid.mat", {"annolist": annolist})
    truth = ground_truth.load_annotations("mpii", str(tmp_path / "valid.mat"))
    assert truth.split is None and len(truth) == 3
    assert truth.where == ("annolist(1).annorect(1)", "annolist(2)", "annolist(3).annorect(1)")
    np.testing.assert_array_equal(truth.counted.sum(1), [3, 0, 1])
    np.testing.assert_array_equal(truth.head_boxes[[0, 2]], [(0, 1, 10, 21), (4, 5, 14, 25)])
    assert np.isnan(truth.head_boxes[1]).all()
    with pytest.raises(AnnotationError, match=r"valid\.mat: a one-person-per-entry file .*--split train"):
        ground_truth.load_annotations("mpii", str(tmp_path / "valid.mat"), "train")
    # A release read entry by entry.
    release = mat_files.write_mpii_release(tmp_path / "release.mat", [{"name": "a.jpg", "people": [person((1, 2, 3, 4))]}])
    assert ground_truth.load_annotations("mpii", release, "entries").where == ("annolist(1).annorect(1)",)
    scipy.io.savemat(tmp_path / "other.mat", {"preds": np.zeros((2, 16, 2))})
    with pytest.raises(AnnotationError, match=r"other\.mat: neither 'RELEASE' nor 'annolist' \(found: preds\)"):
        ground_truth.load_annotations("mpii", str(tmp_path / "other.mat"))


def test_arguments_and_files_that_cannot_be_scored(tmp_path):
    path, _ = write_lsp(tmp_path)
    with pytest.raises(AnnotationError, match="lsp: unknown split 'valid'; known: test, train"):
        ground_truth.load_annotations("lsp", path, "valid")
    with pytest.raises(AnnotationError, match="unknown benchmark 'coco'; known: lsp, flic, mpii"):
        ground_truth.load_annotations("coco", path)
    with pytest.raises(AnnotationError, match="--mpii_validation applies to mpii, not lsp"):
        ground_truth.load_annotations("lsp", path, mpii_validation="detections.mat")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'absent.mat'}: no such file$") as error:
        ground_truth.load_annotations("lsp", str(tmp_path / "absent.mat"))
    assert not isinstance(error.value, BadExampleError)
    with pytest.raises(DataError, match=rf"^{tmp_path}: is a directory, not a MATLAB \.mat file$"):
        ground_truth.load_annotations("flic", str(tmp_path))
    (tmp_path / "broken.mat").write_bytes(b"\x00garbage" * 50)
    for benchmark in ("lsp", "flic", "mpii"):     # mpii: through matfile.variables
        with pytest.raises(DataError, match=rf"^{tmp_path / 'broken.mat'}: not a MATLAB \.mat file \(it is binary"):
            ground_truth.load_annotations(benchmark, str(tmp_path / "broken.mat"))


def test_the_loaders_use_only_public_reader_functions():
    source = inspect.getsource(ground_truth)
    assert not re.search(r"\b(mpii|flic|lsp|matfile)\._", source)
    assert "scipy" not in source and "loadmat" not in source
