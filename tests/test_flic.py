"""Tests for the FLIC reader (data_pipelines/flic.py) on small `examples.mat` files."""
import os

import numpy as np
import pytest
import scipy.io

from cpm_jax.errors import BadExampleError, DataError
from data_pipelines import flic, records
from tests import mat_files

# The 9 parts of the release's FLIC model and their 1-based `coords` columns (docs/paper_notes.md section 7).
PARTS = [("l_shoulder", 1), ("l_elbow", 2), ("l_wrist", 3), ("r_shoulder", 4), ("r_elbow", 5),
         ("r_wrist", 6), ("l_hip", 7), ("r_hip", 10), ("nose", 17)]
LEFT_RIGHT = {"l_shoulder": "r_shoulder", "l_elbow": "r_elbow", "l_wrist": "r_wrist",
              "l_hip": "r_hip", "nose": "nose"}


def coords(offset, l_shoulder_x, r_shoulder_x, missing=()):
    """All 11 annotated columns at distinct positions (column c at (offset + 10 c, 2 offset + c)),
    shoulders' x as given, the columns in `missing` left NaN."""
    columns = {c: (offset + 10.0 * c, 2.0 * offset + c) for c in mat_files.FLIC_ANNOTATED_COLUMNS
               if c not in missing}
    columns[1] = (l_shoulder_x, columns[1][1])
    columns[4] = (r_shoulder_x, columns[4][1])
    return columns


# 0 train a.jpg  person-facing labels (left shoulder right of the right one): kept
# 1 train a.jpg  right shoulder right of the left one: swapped in train
# 2 test  b.jpg  the same geometry as 1: kept (test labels are never swapped)
# 3 test  b.jpg  a wrist and the nose missing (NaN)
# 4 train c.jpg  left elbow missing; alone in its image
# 5 test  d.jpg  alone
EXAMPLES = [
    {"filepath": "a.jpg", "coords": coords(100, 300.0, 200.0), "torsobox": (180, 150, 320, 400)},
    {"filepath": "a.jpg", "coords": coords(400, 400.0, 500.0), "torsobox": (390, 110, 510, 330)},
    {"filepath": "b.jpg", "coords": coords(50, 40.0, 90.0), "torsobox": (30, 50, 100, 250), "istest": 1},
    {"filepath": "b.jpg", "coords": coords(300, 350.0, 250.0, missing=(3, 17)),
     "torsobox": (240, 60, 360, 280), "istest": 1},
    {"filepath": "c.jpg", "coords": coords(10, 120.0, 60.0, missing=(2,)), "torsobox": (50, 70, 130, 220)},
    {"filepath": "d.jpg", "coords": coords(20, 220.0, 160.0), "torsobox": (150, 40, 230, 190), "istest": 1},
]
TRAIN, TEST = [0, 1, 4], [2, 3, 5]


@pytest.fixture
def root(tmp_path):
    mat_files.write_flic_examples(tmp_path / "examples.mat", EXAMPLES)
    return str(tmp_path)


def expected_labels(example, swap):
    """(joints, visibility) from the definitions: 0-based, NaN -> (0, 0) with visibility 0."""
    c = example["coords"]
    names = [name for name, _ in PARTS]
    column = dict(PARTS)
    if swap and c[4][0] > c[1][0]:
        mirror = {**LEFT_RIGHT, **{v: k for k, v in LEFT_RIGHT.items()}}
        source = [mirror[n] for n in names]
    else:
        source = names
    joints = np.zeros((9, 2))
    visibility = np.zeros(9, np.int32)
    for j, name in enumerate(source):
        if column[name] in c:
            joints[j] = np.array(c[column[name]]) - 1
            visibility[j] = 2
    return joints, visibility


def test_writer_produces_the_official_shapes(root):
    examples = scipy.io.loadmat(os.path.join(root, "examples.mat"), struct_as_record=False,
                                squeeze_me=True)["examples"]
    assert examples.shape == (6,)
    first = examples[0]
    assert first.coords.shape == (2, 29)
    assert np.isnan(first.coords).sum(axis=1).tolist() == [18, 18]      # 11 annotated columns
    assert first.filepath == "a.jpg" and first.torsobox.shape == (4,)
    assert [bool(e.istest) for e in examples] == [False, False, True, True, False, True]
    assert [bool(e.istrain) for e in examples] == [True, True, False, False, True, False]


def test_joint_names_and_flip():
    assert flic.JOINT_NAMES == tuple(name for name, _ in PARTS)
    for i, name in enumerate(flic.JOINT_NAMES):
        mirror = {**LEFT_RIGHT, **{v: k for k, v in LEFT_RIGHT.items()}}[name]
        assert flic.JOINT_NAMES[flic.FLIP_PERMUTATION[i]] == mirror


def test_splits_in_file_order(root):
    train, test = flic.read(root, "train"), flic.read(root, "test")
    assert isinstance(train, records.Annotations)
    assert (train.dataset, test.dataset) == ("flic/train", "flic/test")
    assert list(train.image_paths) == [os.path.join(root, "images", EXAMPLES[i]["filepath"]) for i in TRAIN]
    assert list(test.image_paths) == [os.path.join(root, "images", EXAMPLES[i]["filepath"]) for i in TEST]
    assert train.joints.shape == (3, 9, 2) and train.joints.dtype == np.float32
    assert train.visibility.dtype == np.int32 and train.num_parts == 9


def test_part_order_and_coordinates_of_test_labels(root):
    test = flic.read(root, "test")
    for row, i in enumerate(TEST):
        joints, visibility = expected_labels(EXAMPLES[i], swap=False)
        np.testing.assert_allclose(test.joints[row], joints)
        np.testing.assert_array_equal(test.visibility[row], visibility)
    # example 2 has the geometry that train swaps: the file's left shoulder stays left
    assert test.joints[0, 0, 0] == 40.0 - 1 and test.joints[0, 3, 0] == 90.0 - 1


def test_nan_parts_are_not_labelled(root):
    test, train = flic.read(root, "test"), flic.read(root, "train")
    missing = [flic.JOINT_NAMES.index("l_wrist"), flic.JOINT_NAMES.index("nose")]
    np.testing.assert_array_equal(test.visibility[1, missing], 0)
    np.testing.assert_array_equal(test.joints[1, missing], 0)
    assert (test.visibility[1] == 2).sum() == 7
    assert train.visibility[2, flic.JOINT_NAMES.index("l_elbow")] == 0
    assert np.isfinite(train.joints).all() and np.isfinite(test.joints).all()


def test_train_labels_are_swapped_where_the_right_shoulder_is_right(root):
    train = flic.read(root, "train")
    for row, i in enumerate(TRAIN):
        joints, visibility = expected_labels(EXAMPLES[i], swap=True)
        np.testing.assert_allclose(train.joints[row], joints)
        np.testing.assert_array_equal(train.visibility[row], visibility)
    # example 1 swapped: its left shoulder is the file's right shoulder (x 500), nose unchanged
    np.testing.assert_allclose(train.joints[1, 0], (499, 2 * 400 + 4 - 1))
    np.testing.assert_allclose(train.joints[1, 3], (399, 2 * 400 + 1 - 1))
    np.testing.assert_allclose(train.joints[1, 8], (400 + 170 - 1, 800 + 17 - 1))
    # example 0 kept
    np.testing.assert_allclose(train.joints[0, 0], (299, 200))


def test_center_and_scale_from_the_torso_box(root):
    for split, rows in (("train", TRAIN), ("test", TEST)):
        table = flic.read(root, split)
        for row, i in enumerate(rows):
            x1, y1, x2, y2 = EXAMPLES[i]["torsobox"]
            np.testing.assert_allclose(table.center[row], ((x1 + x2) / 2 - 1, 0.7 * y1 + 0.3 * y2 - 1),
                                       rtol=1e-6)
            np.testing.assert_allclose(table.scale[row], 200 * 0.0110 * (y2 - y1), rtol=1e-6)


def test_others_share_the_filepath(root):
    train, test = flic.read(root, "train"), flic.read(root, "test")
    assert train.others_joints.shape == (3, 1, 9, 2) and test.others_visibility.shape == (3, 1, 9)
    # train: a.jpg's two examples see each other, with the train swap applied to the other too
    for row, other in ((0, 1), (1, 0)):
        joints, visibility = expected_labels(EXAMPLES[other], swap=True)
        np.testing.assert_allclose(train.others_joints[row, 0], joints)
        np.testing.assert_array_equal(train.others_visibility[row, 0], visibility)
    np.testing.assert_allclose(train.others_joints[0, 0], train.joints[1])
    np.testing.assert_array_equal(train.others_visibility[2], 0)          # c.jpg: alone
    # test: b.jpg's two examples, labels as in the file
    for row, other in ((0, 3), (1, 2)):
        joints, visibility = expected_labels(EXAMPLES[other], swap=False)
        np.testing.assert_allclose(test.others_joints[row, 0], joints)
        np.testing.assert_array_equal(test.others_visibility[row, 0], visibility)
    np.testing.assert_array_equal(test.others_visibility[2], 0)


def test_unknown_split(root):
    with pytest.raises(DataError, match=r"'valid'.*train, test"):
        flic.read(root, "valid")


def test_no_head_boxes(root):
    train = flic.read(root, "train")
    assert train.head_boxes.shape == (3, 4) and np.isnan(train.head_boxes).all()
    assert np.isnan(train.row(0)["head_box"]).all()


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path / 'examples.mat'}: no such file$") as error:
        flic.read(str(tmp_path), "train")
    assert not isinstance(error.value, BadExampleError)      # the whole split, not one example
    with pytest.raises(DataError, match=rf"^{tmp_path / 'absent'}: no such directory"):
        flic.read(str(tmp_path / "absent"), "train")
    (tmp_path / "examples.mat").write_bytes(b"\0garbage" * 40)
    with pytest.raises(DataError, match=r"examples\.mat: not a MATLAB \.mat file \(it is binary data"):
        flic.read(str(tmp_path), "train")
    (tmp_path / "examples.mat").unlink()
    (tmp_path / "examples.mat").mkdir()
    with pytest.raises(DataError, match=r"examples\.mat: is a directory, not a MATLAB \.mat file"):
        flic.read(str(tmp_path), "train")


def test_wrong_variable(tmp_path):
    scipy.io.savemat(tmp_path / "examples.mat", {"joints": np.zeros((3, 14, 2))})
    with pytest.raises(DataError, match=r"examples\.mat.*'examples'.*joints"):
        flic.read(str(tmp_path), "test")


@pytest.mark.parametrize("change, message", [
    ({"omit": ("torsobox",)}, r"examples\(2\)\.torsobox"),        # [] in a struct array
    ({"omit": ("istest",)}, r"examples\(2\)\.istest: expected a number"),
    ({"coords": np.zeros((3, 29))}, r"examples\(2\)\.coords.*2 x 29"),
    ({"torsobox": (1, 2, 3)}, r"examples\(2\)\.torsobox"),
    ({"filepath": np.zeros((0, 0))}, r"examples\(2\)\.filepath"),
])
def test_malformed_example_names_file_and_index(tmp_path, change, message):
    examples = [dict(EXAMPLES[0]), {**EXAMPLES[1], **change}]
    mat_files.write_flic_examples(tmp_path / "examples.mat", examples)
    with pytest.raises(DataError, match=rf"examples\.mat: {message}"):
        flic.read(str(tmp_path), "train")


def test_missing_field_names_file_and_index(tmp_path):
    mat_files.write_flic_examples(tmp_path / "examples.mat",
                                  [{**e, "omit": ("istrain",)} for e in EXAMPLES[:2]])
    with pytest.raises(DataError, match=r"examples\.mat: examples\(1\): no field 'istrain'"):
        flic.read(str(tmp_path), "test")
