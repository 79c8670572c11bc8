"""Tests for the MPII Human Pose reader (data_pipelines/mpii.py) on small release-shaped files."""
import os

import numpy as np
import pytest
import scipy.io

from cpm_jax.errors import BadExampleError, DataError
from data_pipelines import matfile, mpii, records, skeleton
from tests import images, mat_files

# MPII's ids by joint name (docs/paper_notes.md section 7), independent of the reader's table.
MPII_ID = {"r_ankle": 0, "r_knee": 1, "r_hip": 2, "l_hip": 3, "l_knee": 4, "l_ankle": 5,
           "pelvis": 6, "thorax": 7, "neck": 8, "head_top": 9, "r_wrist": 10, "r_elbow": 11,
           "r_shoulder": 12, "l_shoulder": 13, "l_elbow": 14, "l_wrist": 15}


def full_point(mpii_id, **extra):
    """A point at a position that encodes its id: x = 100 + 10 id, y = 300 + 3 id (1-based)."""
    return {"id": mpii_id, "x": 100.0 + 10 * mpii_id, "y": 300.0 + 3 * mpii_id, **extra}


# Image 1: one person (annorect a single struct), all 16 points, is_visible as ints, the right
#          shoulder occluded.
# Image 2: three people: #1 a partial point list with is_visible as strings and one left empty;
#          #2 no annopoints; #3 points without any is_visible field (own struct array below).
# Image 3: a test image (img_train 0) with an annotated person, malformed (a point without x).
# Image 4: no people (annorect = []).
# Image 5: one person with a single point (annopoints.point a single struct).
# Image 6: two people, neither annotated.
IMAGES = [
    {"name": "001.jpg", "people": [
        {"objpos": (321.5, 240.0), "scale": 2.5, "head": (90, 80, 130, 140),
         "points": [full_point(i, is_visible=0 if i == MPII_ID["r_shoulder"] else 1)
                    for i in range(16)]}]},
    {"name": "002.jpg", "people": [
        {"objpos": (50.0, 60.0), "scale": 1.25, "head": (1, 2, 3, 4),
         "points": [{"id": 9, "x": 11.0, "y": 21.0, "is_visible": "1"},
                    {"id": 13, "x": 31.0, "y": 41.0, "is_visible": "0"},
                    {"id": 6, "x": 5.0, "y": 5.0, "is_visible": "1"},
                    {"id": 0, "x": 71.0, "y": 81.0}]},          # is_visible written as []
        {"objpos": (500.0, 400.0), "scale": 3.0, "head": (5, 6, 7, 8)},
        {"objpos": (700.0, 600.0), "scale": 0.5, "head": (9, 10, 11, 12),
         "points": [{"id": 10, "x": 701.0, "y": 601.0}, {"id": 15, "x": 711.0, "y": 611.0}]}]},
    {"name": "003.jpg", "train": 0, "people": [
        {"objpos": (10.0, 10.0), "scale": 1.0, "points": [{"id": 0, "y": 1.0}]}]},
    {"name": "004.jpg", "people": []},
    {"name": "005.jpg", "people": [
        {"objpos": (20.0, 30.0), "scale": 0.75, "points": [{"id": 8, "x": 25.0, "y": 35.0,
                                                             "is_visible": 0}]}]},
    {"name": "006.jpg", "people": [{"objpos": (1.0, 1.0), "scale": 1.0},
                                   {"objpos": (2.0, 2.0), "scale": 1.0}]},
]
# (1-based annolist index, 1-based annorect index) of every annotated training person, in order.
TRAIN_PEOPLE = [(1, 1), (2, 1), (2, 3), (5, 1)]


def write_root(tmp_path, images=IMAGES, folder=None):
    target = tmp_path / folder if folder else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    mat_files.write_mpii_release(target / mpii.RELEASE_FILE, images)
    return str(tmp_path)


@pytest.fixture
def root(tmp_path):
    return write_root(tmp_path)


def load_raw(root):
    return scipy.io.loadmat(os.path.join(root, mpii.RELEASE_FILE), struct_as_record=False,
                            squeeze_me=True)["RELEASE"]


def test_writer_produces_the_official_shapes(root):
    release = load_raw(root)
    annolist = release.annolist
    assert annolist.shape == (6,)
    np.testing.assert_array_equal(release.img_train, [1, 1, 0, 1, 1, 1])
    assert annolist[0].image.name == "001.jpg"
    single = annolist[0].annorect
    assert isinstance(single, scipy.io.matlab.mat_struct)            # a single struct
    assert isinstance(single.annopoints.point, np.ndarray) and single.annopoints.point.shape == (16,)
    assert {"x1", "y1", "x2", "y2", "objpos", "scale", "annopoints"} <= set(single._fieldnames)
    assert single.annopoints.point[0].is_visible == 1
    many = annolist[1].annorect
    assert isinstance(many, np.ndarray) and many.shape == (3,)
    assert isinstance(many[1].annopoints, np.ndarray) and many[1].annopoints.size == 0  # []
    points = many[0].annopoints.point
    assert [p.is_visible for p in points[:3]] == ["1", "0", "1"]                       # strings
    assert isinstance(points[3].is_visible, np.ndarray) and points[3].is_visible.size == 0
    assert "is_visible" not in many[2].annopoints.point[0]._fieldnames                 # missing
    assert isinstance(annolist[3].annorect, np.ndarray) and annolist[3].annorect.size == 0
    lone = annolist[4].annorect.annopoints.point
    assert isinstance(lone, scipy.io.matlab.mat_struct) and lone.id == 8               # single point
    assert "annopoints" not in annolist[5].annorect[0]._fieldnames


def test_as_list_handles_struct_array_single_and_empty(root):
    release = load_raw(root)
    assert len(matfile.as_list(release.annolist)) == 6
    assert len(matfile.as_list(release.annolist[0].annorect)) == 1
    assert len(matfile.as_list(release.annolist[1].annorect)) == 3
    assert matfile.as_list(release.annolist[3].annorect) == []
    assert matfile.as_list(None) == []


def test_train_samples_one_per_annotated_person(root):
    train = mpii.read(root, "train")
    assert isinstance(train, records.Annotations)
    assert train.dataset == "mpii/train"
    assert len(train) == len(TRAIN_PEOPLE)
    names = [IMAGES[i - 1]["name"] for i, _ in TRAIN_PEOPLE]
    assert list(train.image_paths) == [os.path.join(root, "images", n) for n in names]
    assert train.joints.shape == (4, 14, 2) and train.joints.dtype == np.float32
    assert train.visibility.dtype == np.int32 and train.scale.dtype == np.float32
    for row, (i, p) in enumerate(TRAIN_PEOPLE):
        person = IMAGES[i - 1]["people"][p - 1]
        x, y = person["objpos"]
        np.testing.assert_allclose(train.center[row], (x - 1, y - 1))
        np.testing.assert_allclose(train.scale[row], 200 * person["scale"], rtol=1e-6)


def test_joint_ids_map_to_the_project_order(root):
    train = mpii.read(root, "train")
    for j, name in enumerate(skeleton.JOINT_NAMES):
        mpii_id = MPII_ID[name]
        np.testing.assert_allclose(train.joints[0, j], (100.0 + 10 * mpii_id - 1, 300.0 + 3 * mpii_id - 1),
                                   err_msg=name)
    # pelvis (6) and thorax (7) are not among the 14 joints
    assert set(mpii.MPII_IDS) == set(range(16)) - {MPII_ID["pelvis"], MPII_ID["thorax"]}


def test_visibility_codes(root):
    train = mpii.read(root, "train")
    j = skeleton.JOINT_INDEX
    expected = np.full(14, 2)
    expected[j["r_shoulder"]] = 1                        # is_visible 0 (int)
    np.testing.assert_array_equal(train.visibility[0], expected)

    row = train.visibility[1]                            # strings, one empty, missing ids
    assert row[j["head_top"]] == 2                       # '1'
    assert row[j["l_shoulder"]] == 1                     # '0'
    assert row[j["r_ankle"]] == 2                        # []
    listed = [j["head_top"], j["l_shoulder"], j["r_ankle"]]
    np.testing.assert_allclose(train.joints[1, listed], [(10, 20), (30, 40), (70, 80)])
    unlisted = np.setdiff1d(np.arange(14), listed)
    np.testing.assert_array_equal(row[unlisted], 0)      # not labelled (pelvis id 6 is dropped)
    np.testing.assert_array_equal(train.joints[1, unlisted], 0)

    np.testing.assert_array_equal(train.visibility[2][[j["r_wrist"], j["l_wrist"]]], [2, 2])  # no field
    assert (train.visibility[2] > 0).sum() == 2
    assert train.visibility[3][j["neck"]] == 1 and (train.visibility[3] > 0).sum() == 1     # single point
    np.testing.assert_allclose(train.joints[3, j["neck"]], (24, 34))


def test_others_are_the_annotated_people_of_the_same_image(root):
    train = mpii.read(root, "train")
    assert train.others_joints.shape == (4, 1, 14, 2)
    assert train.others_visibility.shape == (4, 1, 14)
    # image 2: person 1 and person 3 see each other; person 2 (no points) is nobody's other
    np.testing.assert_array_equal(train.others_visibility[1, 0], train.visibility[2])
    np.testing.assert_array_equal(train.others_joints[1, 0], train.joints[2])
    np.testing.assert_array_equal(train.others_visibility[2, 0], train.visibility[1])
    np.testing.assert_array_equal(train.others_joints[2, 0], train.joints[1])
    # alone in their images: padding only
    np.testing.assert_array_equal(train.others_visibility[[0, 3]], 0)


def test_head_boxes_travel_in_the_annotations(root, tmp_path):
    train = mpii.read(root, "train")
    assert train.head_boxes.shape == (4, 4) and train.head_boxes.dtype == np.float32
    # annolist(1).annorect(1): head (90, 80, 130, 140); (2, 1): (1, 2, 3, 4); (2, 3): (9, 10, 11, 12),
    # all less 1; (5, 1) has no head box: NaN.
    np.testing.assert_array_equal(train.head_boxes[:3], [(89, 79, 129, 139), (0, 1, 2, 3), (8, 9, 10, 11)])
    assert np.isnan(train.head_boxes[3]).all()
    np.testing.assert_array_equal(train.row(2)["head_box"], (8, 9, 10, 11))
    file = mat_files.write_tompson_validation(tmp_path / "detections.mat", [(2, 3), (1, 1)])
    valid = mpii.read(root, "valid", validation_file=file)
    np.testing.assert_array_equal(valid.head_boxes, [(8, 9, 10, 11), (89, 79, 129, 139)])


ENTRIES = [
    {"name": "a.jpg", "people": [{"objpos": (5.0, 6.0), "scale": 1.0, "head": (1, 1, 11, 21),
                                  "points": [full_point(9), full_point(0, is_visible=0)]}]},
    {"name": "b.jpg", "people": [{"objpos": (5.0, 6.0), "scale": 1.0, "head": (2, 2, 4, 4)}]},
    {"name": "c.jpg", "train": 0, "people": [{"objpos": (7.0, 8.0), "scale": 2.0,
                                              "points": [full_point(15)]}]},
]


def test_read_entries_gives_one_person_per_entry(tmp_path):
    annolist = mat_files.mpii_release(ENTRIES)["annolist"]
    scipy.io.savemat(tmp_path / "valid.mat", {"annolist": annolist})
    people = mpii.read_entries(str(tmp_path / "valid.mat"))
    assert len(people) == 3 and people[1] is None                 # no annopoints: None
    first, third = people[0], people[2]
    assert (first.image_index, first.person_index, first.image_name) == (0, 0, "a.jpg")
    assert first.where == "annolist(1).annorect(1)" and third.where == "annolist(3).annorect(1)"
    j = skeleton.JOINT_INDEX
    np.testing.assert_array_equal(first.joints[j["head_top"]], (100 + 90 - 1, 300 + 27 - 1))
    assert first.visibility[j["head_top"]] == 2 and first.visibility[j["r_ankle"]] == 1
    assert (first.visibility > 0).sum() == 2
    np.testing.assert_array_equal(first.head_box, (0, 0, 10, 20))
    assert np.isnan(third.head_box).all()                          # no head box: NaN
    # The release read entry by entry: every image, whatever img_train says.
    mat_files.write_mpii_release(tmp_path / "release.mat", ENTRIES)
    again = mpii.read_entries(str(tmp_path / "release.mat"))
    assert [p is None for p in again] == [False, True, False]
    np.testing.assert_array_equal(again[2].joints, third.joints)


def test_read_entries_errors_name_the_file(tmp_path):
    two = mat_files.mpii_release([{"name": "a.jpg", "people": ENTRIES[0]["people"] * 2}])["annolist"]
    scipy.io.savemat(tmp_path / "two.mat", {"annolist": two})
    with pytest.raises(DataError, match=r"two\.mat: annolist\(1\) has 2 annorect"):
        mpii.read_entries(str(tmp_path / "two.mat"))
    scipy.io.savemat(tmp_path / "other.mat", {"joints": np.ones(3)})
    with pytest.raises(DataError, match=r"other\.mat: neither 'RELEASE' nor 'annolist' \(found: joints\)"):
        mpii.read_entries(str(tmp_path / "other.mat"))
    scipy.io.savemat(tmp_path / "empty.mat", {"annolist": mat_files.EMPTY})
    with pytest.raises(DataError, match=r"empty\.mat: 'annolist' is empty"):
        mpii.read_entries(str(tmp_path / "empty.mat"))


def test_test_images_are_not_read(root):
    # image 3 is malformed (a point without x) but has img_train 0: genJSON.m never reads it
    _, people = mpii.load_people(os.path.join(root, mpii.RELEASE_FILE))
    assert [(p.image_index + 1, p.person_index + 1) for p in people] == TRAIN_PEOPLE
    assert people[0].where == "annolist(1).annorect(1)"
    np.testing.assert_allclose(people[0].head_box, (89, 79, 129, 139))


def test_release_in_the_zip_folder(tmp_path):
    root = write_root(tmp_path, folder=mpii.RELEASE_FOLDER)
    assert len(mpii.read(root, "train")) == len(TRAIN_PEOPLE)


def test_tompson_validation_split(root, tmp_path):
    file = mat_files.write_tompson_validation(tmp_path / "detections.mat", [(2, 3), (1, 1)])
    valid = mpii.read(root, "valid", validation_file=file)
    train = mpii.read(root, "train", validation_file=file)
    everyone = mpii.read(root, "train")
    assert valid.dataset == "mpii/valid"
    # valid: exactly the listed people, in the file's order
    np.testing.assert_array_equal(valid.joints, everyone.joints[[2, 0]])
    np.testing.assert_array_equal(valid.center, everyone.center[[2, 0]])
    # ... with the others of their image, whichever split those belong to
    np.testing.assert_array_equal(valid.others_visibility[0, 0], everyone.visibility[1])
    # train: everyone else
    np.testing.assert_array_equal(train.joints, everyone.joints[[1, 3]])
    np.testing.assert_array_equal(train.others_visibility[0, 0], everyone.visibility[2])
    assert list(train.image_paths) == list(everyone.image_paths[[1, 3]])


def test_relative_validation_file_is_found_under_root(root, tmp_path, monkeypatch):
    mat_files.write_tompson_validation(os.path.join(root, "detections.mat"), [(5, 1)])
    (tmp_path / "cwd" / "here").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")       # no detections.mat here: found under root
    valid = mpii.read(root, "valid", validation_file="detections.mat")
    assert list(valid.image_paths) == [os.path.join(root, "images", "005.jpg")]
    assert mpii.validation_path(root, "detections.mat") == os.path.join(root, "detections.mat")
    # A relative path that exists as given wins over the one under root.
    mat_files.write_tompson_validation(tmp_path / "cwd" / "here" / "detections.mat", [(1, 1)])
    assert mpii.validation_path(root, "here/detections.mat") == "here/detections.mat"
    assert mpii.read(root, "valid", validation_file="here/detections.mat").image_paths[0].endswith("001.jpg")
    with pytest.raises(DataError, match=rf"^elsewhere\.mat: no such file \(nor {root}/elsewhere\.mat\)"):
        mpii.read(root, "valid", validation_file="elsewhere.mat")


def test_validation_file_in_matlab_v73_format(root, tmp_path):
    pytest.importorskip("h5py")
    path = mat_files.write_v73(tmp_path / "detections_v73.mat", {        # MATLAB 1 x 2 each
        "RELEASE_img_index": [[2.0, 5.0]], "RELEASE_person_index": [[1.0, 1.0]]})
    valid = mpii.read(root, "valid", validation_file=path)
    assert [os.path.basename(p) for p in valid.image_paths] == ["002.jpg", "005.jpg"]


def test_split_errors(root, tmp_path):
    with pytest.raises(DataError, match=r"'test'.*train, valid"):
        mpii.read(root, "test")
    with pytest.raises(DataError, match="validation file"):
        mpii.read(root, "valid")
    for pair in [(2, 2), (3, 1), (9, 1)]:     # no annopoints, a test image, beyond annolist
        file = mat_files.write_tompson_validation(tmp_path / "bad.mat", [(1, 1), pair])
        with pytest.raises(DataError, match=rf"bad\.mat.*entry 2.*annolist\({pair[0]}\)"
                                                          rf"\.annorect\({pair[1]}\)"):
            mpii.read(root, "valid", validation_file=file)


def test_validation_file_errors(root, tmp_path):
    missing = str(tmp_path / "nowhere.mat")
    with pytest.raises(DataError, match="nowhere.mat"):
        mpii.read(root, "valid", validation_file=missing)
    wrong = tmp_path / "wrong.mat"
    scipy.io.savemat(wrong, {"RELEASE_img_index": np.array([[1.0]])})
    with pytest.raises(DataError, match="wrong.mat.*RELEASE_person_index"):
        mpii.read(root, "train", validation_file=str(wrong))


def test_missing_or_unreadable_release(tmp_path):
    with pytest.raises(DataError, match=mpii.RELEASE_FILE) as error:
        mpii.read(str(tmp_path), "train")
    assert str(tmp_path) in str(error.value)
    assert not isinstance(error.value, BadExampleError)      # the whole split, not one example
    (tmp_path / mpii.RELEASE_FILE).write_bytes(b"not a MATLAB file at all" * 10)
    with pytest.raises(DataError, match=rf"{mpii.RELEASE_FILE}: not a MATLAB \.mat file \(it is text"):
        mpii.read(str(tmp_path), "train")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'absent'}: no such directory"):
        mpii.read(str(tmp_path / "absent"), "train")


def test_a_release_saved_as_matlab_v73_asks_for_v7(tmp_path):
    pytest.importorskip("h5py")
    mat_files.write_v73(tmp_path / mpii.RELEASE_FILE, {}, structs=("RELEASE",))
    with pytest.raises(DataError, match=rf"{mpii.RELEASE_FILE}: a MATLAB v7.3 .*'-v7'"):
        mpii.read(str(tmp_path), "train")


def test_wrong_variable(tmp_path):
    scipy.io.savemat(tmp_path / mpii.RELEASE_FILE, {"joints": np.zeros((3, 14, 2))})
    with pytest.raises(DataError, match=rf"{mpii.RELEASE_FILE}.*'RELEASE'.*joints"):
        mpii.read(str(tmp_path), "train")


def test_missing_release_field(tmp_path):
    release = mat_files.mpii_release(IMAGES)
    del release["img_train"]
    scipy.io.savemat(tmp_path / mpii.RELEASE_FILE, {"RELEASE": release})
    with pytest.raises(DataError, match=rf"{mpii.RELEASE_FILE}.*img_train"):
        mpii.read(str(tmp_path), "train")


@pytest.mark.parametrize("person, message", [
    ({"scale": 1.0, "points": [full_point(0)]}, r"annorect\(2\).*objpos"),
    ({"objpos": (1, 1), "points": [full_point(0)]}, r"annorect\(2\).*scale"),
    ({"objpos": [], "scale": 1.0, "points": [full_point(0)]}, r"annorect\(2\).*objpos"),
    ({"objpos": (1, 1), "scale": 1.0, "points": [{"id": 3, "y": 1.0}]},       # no field x
     r"annorect\(2\)\.annopoints\.point\(1\).*'x'"),
    ({"objpos": (1, 1), "scale": 1.0, "points": [full_point(0), {"id": 3, "y": 1.0}]},  # x = []
     r"annorect\(2\)\.annopoints\.point\(2\)\.x: expected a number"),
    ({"objpos": (1, 1), "scale": 1.0, "points": [full_point(16)]}, r"annorect\(2\).*id 16"),
    ({"objpos": (1, 1), "scale": 1.0, "points": [{"id": 2, "x": [], "y": 1.0}]},
     r"annorect\(2\)\.annopoints\.point\(1\)\.x"),
])
def test_malformed_person_names_file_image_and_person(tmp_path, person, message):
    images = [IMAGES[0], {"name": "x.jpg", "people": [{"objpos": (1, 1), "scale": 1.0}, person]}]
    write_root(tmp_path, images)
    with pytest.raises(DataError, match=rf"{mpii.RELEASE_FILE}: annolist\(2\)\.{message}"):
        mpii.read(str(tmp_path), "train")


# ---------------------------------------------------------------------------------------------
# matfile.load, the one MATLAB loader (the readers above and prediction files use it).

def test_matfile_load_gives_matlabs_dimension_order_for_every_version(tmp_path):
    cube = np.arange(24.0).reshape(2, 3, 4)                 # MATLAB 2 x 3 x 4
    scipy.io.savemat(tmp_path / "v5.mat", {"cube": cube, "name": "abc"})
    pytest.importorskip("h5py")
    mat_files.write_v73(tmp_path / "v73.mat", {"cube": cube}, {"name": "abc"}, structs=("a_struct",))
    for version in ("v5", "v73"):
        loaded = matfile.load(str(tmp_path / f"{version}.mat"))
        assert set(loaded) == {"cube", "name"}, version          # no __header__; structs left out
        np.testing.assert_array_equal(loaded["cube"], cube, err_msg=version)
        np.testing.assert_array_equal(loaded["name"], ["abc"], err_msg=version)       # loadmat's way
        assert sorted(matfile.variables(str(tmp_path / f"{version}.mat"))) == \
            (["cube", "name"] if version == "v5" else ["a_struct", "cube", "name"])
    with pytest.raises(DataError, match=r"v73\.mat: a MATLAB v7\.3 \(HDF5\) file, whose structs are not read"):
        matfile.load(str(tmp_path / "v73.mat"), structs=True)


def test_matfile_messages_start_with_the_path(tmp_path):
    cases = {"missing.mat": (None, "no such file"),
             "dir.mat": ("dir", r"is a directory, not a MATLAB \.mat file"),
             "png.mat": (images.encode(images.gradient(4, 4), "PNG"), r"not a MATLAB \.mat file \(it is a PNG image\)"),
             "zip.mat": (b"PK\x03\x04" + bytes(200), r"not a MATLAB \.mat file \(it is a zip archive\)"),
             "zeros.mat": (bytes(600), r"not a MATLAB \.mat file \(it is binary data beginning b'\\x00"),
             "short.mat": (b"x = 1\n", r"not a MATLAB \.mat file \(it is text beginning 'x = 1\\n'\)")}
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content == "dir":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        for read in (matfile.load, matfile.variables):
            with pytest.raises(DataError, match=rf"^{path}: {message}") as error:
                read(str(path))
            assert "index out of range" not in str(error.value)


def test_head_boxes_survive_take_and_concatenate(root):
    train = mpii.read(root, "train")                          # boxes, last one NaN
    plain = records.make("plain", ["x.jpg"], np.zeros((1, 14, 2)), np.zeros((1, 14)), [(1, 1)], [10.0])
    assert np.isnan(plain.head_boxes).all() and plain.head_boxes.shape == (1, 4)
    both = records.concatenate("both", [train.take([2, 0]), plain])
    np.testing.assert_array_equal(both.head_boxes[:2], [(8, 9, 10, 11), (89, 79, 129, 139)])
    assert np.isnan(both.head_boxes[2]).all() and both.others_joints.shape == (3, 1, 14, 2)
    with pytest.raises(ValueError, match=r"head_boxes \(2, 4\) must be \(1, 4\)"):
        records.make("bad", ["x.jpg"], np.zeros((1, 14, 2)), np.zeros((1, 14)), [(1, 1)], [10.0],
                     head_boxes=np.zeros((2, 4)))
