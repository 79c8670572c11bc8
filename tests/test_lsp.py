"""LSP and LSP Extended readers (data_pipelines/lsp.py, docs/paper_notes.md section 7) and the release's
`insertMPILikeScale` (genJSON.m), on the real LSPET copy and on small files written here."""
import re
import warnings

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cpm_jax.errors import BadExampleError, ConfigError, DataError
from data_pipelines import lsp, registry, sources
from tests import images, mat_files
from tests.conftest import require_shared, tiny_config

# docs/paper_notes.md section 7: the project-wide LSP joint order.
LSP_ORDER = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
             "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top")
J = {name: i for i, name in enumerate(LSP_ORDER)}

# genJSON.m ('LEEDS') moves LSP's joints into MPII's 16 slots and, in insertMPILikeScale, drops
# the two dummy slots (pelvis, thorax): it works on the joints in this order, with the 1-based
# parents `pa = [2 3 7, 5 4 7, 8 0, 10 11 7, 13 12 7]`; limbs are the children [1:7, 9:14], the
# 7th (neck -> head top) is the reference. Written out here independently of lsp._LIMBS.
GENJSON_ORDER = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "neck", "head_top",
                 "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist")
GENJSON_PA = (2, 3, 7, 5, 4, 7, 8, 0, 10, 11, 7, 13, 12, 7)
TARGET_DIST = 41 / 35
BOX, PSIZE = 368, 64


def matlab_quantile(values: np.ndarray, p: float) -> float:
    """MATLAB's quantile of a vector: NaNs removed; sorted x(i) sits at (i - 0.5) / n, linear
    interpolation between, the extremes beyond."""
    x = np.sort(np.asarray(values, np.float64)[~np.isnan(values)])
    n = len(x)
    if n == 0:
        return np.nan
    h = n * p + 0.5                       # 1-based position
    if h <= 1:
        return float(x[0])
    if h >= n:
        return float(x[-1])
    lo = int(np.floor(h))
    return float(x[lo - 1] + (h - lo) * (x[lo] - x[lo - 1]))


def genjson_scale(joints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """insertMPILikeScale, step by step as in genJSON.m: (N,) `scale_provided` (MPII units) of
    joints (N, 14, 2) in LSP order with visible (N, 14) bool."""
    order = [J[name] for name in GENJSON_ORDER]
    x, y = joints[:, order, 0].astype(np.float64), joints[:, order, 1].astype(np.float64)
    vis = visible[:, order].astype(np.float64)
    children = np.array([c for c in range(1, 15) if c != 8]) - 1
    parents = np.array([GENJSON_PA[c] for c in children]) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        length = np.sqrt((x[:, children] - x[:, parents]) ** 2 + (y[:, children] - y[:, parents]) ** 2)
        limb_vis = vis[:, children] * vis[:, parents]
        r = np.empty(13)
        for p in range(13):
            valid = limb_vis[:, 6] * limb_vis[:, p] == 1
            ratio = length[valid, p] / length[valid, 6]
            ratio = ratio[~np.isnan(ratio)]
            r[p] = np.median(ratio) if ratio.size else np.nan
        out = np.empty(len(x))
        for f in range(len(x)):
            update = (length[f] / r)[limb_vis[f] == 1]
            scale_in_cpp = TARGET_DIST / (matlab_quantile(update, 0.75) / 35)
            shown = vis[f] == 1
            x_ub = (BOX - PSIZE) / (x[f, shown].max() - x[f, shown].min())
            y_ub = (BOX - PSIZE) / (y[f, shown].max() - y[f, shown].min())
            candidates = [v for v in (min(x_ub, y_ub), scale_in_cpp) if not np.isnan(v)]  # MATLAB's min skips NaN
            out[f] = TARGET_DIST / min(candidates)
    return out


# A hand-built standing person (LSP order, pixels): head-neck 30 px, 170 px tall, 68 px wide.
PERSON = np.array([(60, 190), (62, 150), (64, 110), (84, 110), (86, 150), (88, 190),
                   (40, 115), (48, 85), (58, 55), (90, 55), (100, 85), (108, 115),
                   (74, 50), (74, 20)], np.float64)
ALL_VISIBLE = np.ones(14, bool)


def random_people(rng, n: int, spread: float = 60.0) -> np.ndarray:
    """n jittered copies of PERSON at random sizes and positions, (n, 14, 2)."""
    size = rng.uniform(0.5, 1.5, (n, 1, 1))
    return (PERSON + rng.normal(0, 8, (n, 14, 2))) * size + rng.uniform(0, spread, (n, 1, 2))


# ---------------------------------------------------------------------------------------------
# The real LSP Extended set.

@pytest.fixture(scope="module")
def lspet_real():
    require_shared([images.LSPET_ROOT / "joints.mat", images.LSPET_ROOT / "images" / "im00001.jpg"],
                   "the LSP Extended copy (shared/datasets/lspet)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # nothing leaks to the user's terminal
        ann = lsp.read(str(images.LSPET_ROOT), "lspet", "train")
    raw = scipy.io.loadmat(str(images.LSPET_ROOT / "joints.mat"))["joints"]     # 14 x 3 x N
    return ann, raw


def test_real_lspet_rows_are_0_based_with_visibility_from_the_flag(lspet_real):
    ann, raw = lspet_real
    assert raw.shape == (14, 3, 10000)
    assert len(ann) == 10000 and ann.num_parts == 14
    assert ann.image_paths[0] == str(images.LSPET_ROOT / "images" / "im00001.jpg")
    assert ann.image_paths[-1] == str(images.LSPET_ROOT / "images" / "im10000.jpg")
    assert np.isfinite(ann.joints).all()
    # A couple of entries by hand: sample 1's right knee, sample 10000's head top.
    assert ann.joints[0, J["r_knee"]] == pytest.approx(raw[J["r_knee"], :2, 0] - 1, abs=1e-4)
    assert ann.joints[9999, J["head_top"]] == pytest.approx(raw[J["head_top"], :2, 9999] - 1, abs=1e-4)
    np.testing.assert_allclose(ann.joints, raw[:, :2].transpose(2, 0, 1) - 1, atol=1e-4)
    # LSPET flag 1 = visible -> 2; flag 0 joints have no position (a placeholder on the x = 0 or
    # y = 0 axis, 1-based), so they are not labelled -> 0.
    flags = raw[:, 2].T
    assert set(np.unique(flags)) == {0.0, 1.0}
    np.testing.assert_array_equal(ann.visibility, np.where(flags == 1, 2, 0))
    placeholder = raw[:, :2].transpose(2, 0, 1)[flags == 0]
    assert ((placeholder[:, 0] == 0) | (placeholder[:, 1] == 0)).all()


def test_real_lspet_has_labelled_joints_outside_the_image(lspet_real):
    ann, raw = lspet_real
    outside = (ann.joints < -0.5).any(-1) & (ann.visibility > 0)   # left of / above the first pixel
    assert outside.sum() >= 5, "LSPET's truncated people have labelled joints at negative coordinates"
    assert (ann.visibility[outside] == 2).all()


def test_real_lspet_centres_are_the_middle_of_the_visible_joints(lspet_real):
    ann, raw = lspet_real
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ann), 25, replace=False):
        visible = raw[:, 2, i] == 1
        xy = raw[visible, :2, i] - 1
        expected = (xy.min(0) + xy.max(0)) / 2
        np.testing.assert_allclose(ann.center[i], expected, atol=1e-3, err_msg=f"sample {i}")
    # ... and since visible joints are in the picture, every centre lies in its image.
    sizes = np.array([Image.open(p).size for p in ann.image_paths], np.float64)      # (w, h)
    assert ((ann.center >= -0.5) & (ann.center <= sizes - 0.5)).all()


def test_real_lspet_scales_are_sane_and_follow_genjson(lspet_real):
    ann, raw = lspet_real
    assert (ann.scale > 0).all() and np.isfinite(ann.scale).all()
    # The README: people are scaled to about 150 px long.
    assert 80 < np.median(ann.scale) < 300
    expected = 200 * genjson_scale(raw[:, :2].transpose(2, 0, 1) - 1, raw[:, 2].T == 1)
    np.testing.assert_allclose(ann.scale, expected, rtol=1e-4)


def test_real_lspet_images_decode_to_their_jpeg_size(lspet_real):
    ann, _ = lspet_real
    source = sources.from_annotations(ann)
    assert source.size == 10000 and source.num_parts == 14
    for i in (0, 1, 4321, 9999):
        record = source.load(i)
        with Image.open(ann.image_paths[i]) as image:
            width, height = image.size
            rgb = np.asarray(image.convert("RGB"))
        assert record["image"].shape == (height, width, 3) and record["image"].dtype == np.uint8
        np.testing.assert_array_equal(record["image"], rgb)
        np.testing.assert_array_equal(record["joints"], ann.joints[i])
        assert record["others_joints"].shape == (0, 14, 2)


# ---------------------------------------------------------------------------------------------
# A small LSP (3 x 14 x 2000, flag 1 = occluded) written here.

@pytest.fixture(scope="module")
def small_lsp(tmp_path_factory):
    rng = np.random.default_rng(1)
    n = 2000
    sizes = np.stack([rng.integers(6, 21, n), rng.integers(4, 31, n)], -1)       # (w, h)
    joints = rng.uniform(1, sizes[:, None, :], (n, 14, 2)).round(2)              # 1-based
    flags = (rng.uniform(size=(n, 14)) < 0.3).astype(np.float64)
    root = images.write_layout(tmp_path_factory.mktemp("lsp"), joints, flags, "lsp", sizes)
    return root, joints, flags, sizes


@pytest.mark.parametrize("split, first", [("train", 0), ("test", 1000)])
def test_lsp_split_rows(small_lsp, split, first):
    root, joints, flags, sizes = small_lsp
    ann = lsp.read(str(root), "lsp", split)
    rows = np.arange(first, first + 1000)
    assert len(ann) == 1000
    assert list(ann.image_paths) == [str(root / f"images/im{i + 1:04d}.jpg") for i in rows]
    np.testing.assert_array_equal(ann.joints, (joints[rows] - 1).astype(np.float32))
    np.testing.assert_array_equal(ann.visibility, np.where(flags[rows] == 0, 2, 1))
    np.testing.assert_array_equal(ann.center, ((sizes[rows] - 1) / 2).astype(np.float32))
    # A split is scaled by itself (genJSON.m's visible = 1 - flag).
    np.testing.assert_allclose(ann.scale, 200 * genjson_scale(joints[rows] - 1, flags[rows] == 0), rtol=1e-5)
    assert ann.others_joints.shape == (1000, 0, 14, 2)
    assert ann.head_boxes.shape == (1000, 4) and np.isnan(ann.head_boxes).all()


def test_lsp_images_load_with_their_size(small_lsp):
    root, joints, flags, sizes = small_lsp
    source = sources.from_annotations(lsp.read(str(root), "lsp", "test"))
    for i in (0, 537, 999):
        w, h = sizes[1000 + i]
        record = source.load(i)
        assert record["image"].shape == (h, w, 3)
        np.testing.assert_array_equal(record["center"], [(w - 1) / 2, (h - 1) / 2])


def test_layouts_are_told_by_shape_and_the_reader_checks_the_one_asked_for(tmp_path, small_lsp):
    _, joints, flags, _ = small_lsp
    # The LSPET layout under the same file name: read as LSPET (flag 1 = visible, 5-digit names).
    flags = flags.copy()
    flags[3] = 0                                  # sample 3: no visible joint (LSPET's flag 0)
    lspet_root = images.write_layout(tmp_path / "x", joints[:40], flags[:40], "lspet")
    layout, read = lsp.read_joints(str(lspet_root / "joints.mat"))
    assert layout == "lspet" and read.shape == (40, 14, 3)
    np.testing.assert_array_equal(read[..., :2], joints[:40])
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no all-NaN or divide warnings for sample 3
        ann = lsp.read(str(lspet_root), "lspet", "train")
    assert len(ann) == 40 and ann.image_paths[39] == str(lspet_root / "images/im00040.jpg")
    np.testing.assert_array_equal(ann.visibility, np.where(flags[:40] == 1, 2, 0))
    visible = flags[:40] == 1
    for i in (0, 1, 2, 4):
        xy = joints[i, visible[i]] - 1
        np.testing.assert_allclose(ann.center[i], (xy.min(0) + xy.max(0)) / 2, atol=1e-4)
    assert np.isnan(ann.center[3]).all() and np.isnan(ann.scale[3])
    # The LSP layout of 40 samples is recognised as LSP, and is too short for its splits.
    lsp_root = images.write_layout(tmp_path / "y", joints[:40], flags[:40], "lsp")
    assert lsp.read_joints(str(lsp_root / "joints.mat"))[0] == "lsp"
    with pytest.raises(DataError, match="40 samples"):
        lsp.read(str(lsp_root), "lsp", "train")


def test_a_joints_file_of_the_other_layout_is_named_with_the_fix(tmp_path, small_lsp):
    _, joints, flags, _ = small_lsp
    lsp_root = images.write_layout(tmp_path / "lsp", joints, flags, "lsp")
    lspet_root = images.write_layout(tmp_path / "lspet", joints[:30], flags[:30], "lspet")
    # LSP's 3 x 14 x 2000 given as LSPET: not silently read as the other layout.
    with pytest.raises(DataError) as error:
        lsp.read(str(lsp_root), "lspet", "train")
    assert str(error.value) == (
        f"{lsp_root / 'joints.mat'}: 'joints' is 3 x 14 x 2000, the LSP layout (3 x 14 x N); "
        "expected the LSP Extended layout (14 x 3 x N): set data.dataset=lsp, or point "
        "data.paths.lspet at the LSP Extended folder (lspet_dataset, 14 x 3 x 10000)")
    with pytest.raises(DataError, match=r"'joints' is 14 x 3 x 30, the LSP Extended layout .*"
                                        r"expected the LSP layout .*data\.paths\.lsp at the LSP folder"):
        lsp.read(str(lspet_root), "lsp", "test")
    # lsp+lspet with the two folders swapped: the first part is named.
    with pytest.raises(DataError, match=rf"^{lsp_root / 'joints.mat'}: .*expected the LSP Extended"):
        lsp.read_many([(str(lsp_root), "lspet", "train"), (str(lspet_root), "lsp", "train")])
    with pytest.raises(DataError, match="the LSP benchmark's annotations"):
        lsp.read_joints(str(lspet_root / "joints.mat"), "lsp", fix="the LSP benchmark's annotations ...")
    # Through the registry, as a config names them.
    config = tiny_config()
    config.data.dataset, config.data.paths.lspet = "lspet", str(lsp_root)
    with pytest.raises(DataError, match="set data.dataset=lsp"):
        registry.open_split(config.data, "train")


@pytest.mark.parametrize("shape", [(2, 14, 5), (14, 2, 5), (3, 15, 5), (15, 3, 5), (3, 14), (14, 3, 5, 2)])
def test_wrong_joints_shapes_are_named(tmp_path, shape):
    path = tmp_path / "joints.mat"
    scipy.io.savemat(str(path), {"joints": np.ones(shape)})
    with pytest.raises(DataError, match="joints.mat") as error:
        lsp.read_joints(str(path))
    assert str(path) in str(error.value) and "shape" in str(error.value)
    assert not isinstance(error.value, BadExampleError)      # the whole split, not one example
    with pytest.raises(DataError, match=str(path)):
        lsp.read(str(tmp_path), "lspet", "train")


def test_no_joints_variable_is_named(tmp_path):
    scipy.io.savemat(str(tmp_path / "joints.mat"), {"points": np.ones((3, 14, 5))})
    with pytest.raises(DataError, match="no variable 'joints'") as error:
        lsp.read(str(tmp_path), "lsp", "train")
    assert str(tmp_path / "joints.mat") in str(error.value) and "points" in str(error.value)


# A MATLAB v7.3 (HDF5) file's header without the HDF5 after it.
V73_HEADER = mat_files.V73_HEADER.ljust(512, b"\x00")


@pytest.mark.parametrize("content, message", [
    pytest.param(bytes(range(256)) * 8, r"not a MATLAB \.mat file \(it is binary data beginning b'\\x00\\x01", id="garbage"),
    pytest.param(b"joints = [1 2 3]\n" * 20, r"not a MATLAB \.mat file \(it is text beginning 'joints = \[1 2 3\]", id="text"),
    pytest.param(images.encode(images.gradient(8, 8)), r"not a MATLAB \.mat file \(it is a JPEG image\)", id="jpeg"),
    pytest.param(b"", r"not a MATLAB \.mat file \(it is an empty file\)", id="empty"),
    pytest.param(b"joints = [1 2 3]\n", r"not a MATLAB \.mat file \(it is text", id="short-text"),
    pytest.param(V73_HEADER, r"a damaged MATLAB v7.3 \(HDF5\) file \(h5py: ", id="matlab-v7.3"),
    pytest.param(b"MATLAB 5.0 MAT-file".ljust(116) + bytes(8) + b"\x00\x01IM" + b"\x0e\x00", r"a damaged MATLAB \.mat file",
                 id="matlab-v5-truncated"),
])
def test_a_file_that_is_not_a_readable_matlab_file_is_named(tmp_path, content, message):
    (tmp_path / "joints.mat").write_bytes(content)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'joints.mat'}: {message}"):
        lsp.read(str(tmp_path), "lspet", "train")


def test_missing_files_and_directories_are_named(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path / 'missing'}: no such directory \(the LSP Extended folder"):
        lsp.read(str(tmp_path / "missing"), "lspet", "train")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'joints.mat'}: no such file$") as error:
        lsp.read(str(tmp_path), "lsp", "train")
    assert not isinstance(error.value, BadExampleError)
    (tmp_path / "joints.mat").mkdir()
    with pytest.raises(DataError, match=rf"^{tmp_path / 'joints.mat'}: is a directory, not a MATLAB \.mat file$"):
        lsp.read(str(tmp_path), "lsp", "train")
    with pytest.raises(DataError, match=r"no such file \(the directory .*nowhere does not exist\)"):
        lsp.read_joints(str(tmp_path / "nowhere" / "joints.mat"))


def test_a_joints_file_saved_as_matlab_v73_reads_as_the_v7_one(tmp_path, small_lsp):
    pytest.importorskip("h5py")
    _, joints, flags, _ = small_lsp
    v7 = images.write_layout(tmp_path / "v7", joints[:12], flags[:12], "lspet")
    v73 = tmp_path / "v73"
    (v73 / "images").mkdir(parents=True)
    mat_files.write_v73(v73 / "joints.mat", {"joints": images.lsp_matrix(joints[:12], flags[:12], "lspet")})
    assert lsp.read_joints(str(v73 / "joints.mat"))[0] == "lspet"
    a, b = lsp.read(str(v7), "lspet", "train"), lsp.read(str(v73), "lspet", "train")
    np.testing.assert_array_equal(a.joints, b.joints)
    np.testing.assert_array_equal(a.visibility, b.visibility)
    np.testing.assert_array_equal(a.scale, b.scale)


def test_unknown_splits_are_named(tmp_path, small_lsp):
    root, joints, flags, _ = small_lsp
    for split in ("val", "validation", "Train"):
        with pytest.raises(DataError, match=f"'{split}'"):
            lsp.read(str(root), "lsp", split)
    lspet_root = images.write_layout(tmp_path, joints[:10], flags[:10], "lspet")
    with pytest.raises(DataError, match="'test'"):
        lsp.read(str(lspet_root), "lspet", "test")


def test_an_unreadable_lsp_image_is_a_bad_example_not_a_failed_split(tmp_path, small_lsp):
    # LSP's centre is the image centre: an image that cannot be read leaves it NaN, and loading
    # the example names the file (or skips it); the other examples are read.
    _, joints, flags, sizes = small_lsp
    root = images.write_layout(tmp_path, joints, flags, "lsp", sizes)
    (root / "images" / "im1003.jpg").unlink()
    (root / "images" / "im1005.jpg").write_bytes(b"not an image")
    ann = lsp.read(str(root), "lsp", "test")
    assert np.isnan(ann.center[[2, 4]]).all() and np.isfinite(ann.center[[0, 1, 3]]).all()
    source = sources.from_annotations(ann)
    assert source.load(3) is not None
    with pytest.raises(BadExampleError, match=r"example 2 .*im1003\.jpg.*No such file"):
        source.load(2)
    with pytest.raises(BadExampleError, match=r"example 4 .*im1005\.jpg.*not a JPEG or PNG image "
                                              r"\(it is text beginning 'not an image'\)"):
        source.load(4)
    skipping = sources.from_annotations(ann, skip_bad_examples=True)
    assert skipping.load(2) is None and skipping.load(4) is None


# ---------------------------------------------------------------------------------------------
# mpi_like_scale (genJSON.m's insertMPILikeScale) on hand-built people.

def test_one_person_is_scaled_by_the_neck_head_limb():
    # Alone, every limb's median ratio is its own ratio to neck-head, so every normalised limb
    # is the neck-head length (30 px) and so is their 75th percentile: scale = 30 / 35.
    scale = lsp.mpi_like_scale(PERSON[None], ALL_VISIBLE[None])
    assert scale == pytest.approx([30 / 35], rel=1e-9)


def test_two_identical_people_scaled_by_two_have_scales_in_ratio_two():
    shifted = PERSON * 2 + [300.0, -40.0]
    scale = lsp.mpi_like_scale(np.stack([PERSON, shifted]), np.ones((2, 14), bool))
    assert scale[1] / scale[0] == pytest.approx(2.0, rel=1e-9)
    # Same proportions: the normalised limbs are each person's neck-head length.
    np.testing.assert_allclose(scale, [30 / 35, 60 / 35], rtol=1e-9)


def test_a_person_too_wide_at_the_canonical_zoom_is_squeezed_into_304_px():
    person = PERSON.copy()
    person[J["head_top"]] = (74, 40)               # neck-head 10 px: canonical zoom (41/35)/(10/35) = 4.1
    extent = 190 - 40                              # y range of the joints; x range 68 is smaller
    assert extent * 4.1 > BOX - PSIZE
    expected = TARGET_DIST * extent / (BOX - PSIZE)   # the zoom capped at 304 / extent
    assert lsp.mpi_like_scale(person[None], ALL_VISIBLE[None]) == pytest.approx([expected], rel=1e-9)
    # An occluded joint far away neither widens the person nor enters the limbs.
    far, visible = person.copy(), ALL_VISIBLE.copy()
    far[J["l_ankle"]], visible[J["l_ankle"]] = (5000, 5000), False
    assert lsp.mpi_like_scale(far[None], visible[None]) == pytest.approx([expected], rel=1e-9)
    # Not squeezed: at 30 px neck-head the zoom is 41/30 and 170 px become 232 < 304.
    assert lsp.mpi_like_scale(PERSON[None], ALL_VISIBLE[None])[0] == pytest.approx(30 / 35)


def test_medians_and_75th_percentile_match_genjson_on_a_crowd():
    rng = np.random.default_rng(2)
    joints = random_people(rng, 41)
    visible = rng.uniform(size=(41, 14)) > 0.2
    visible[:, [J["neck"], J["head_top"]]] |= rng.uniform(size=(41, 1)) > 0.3
    # Five people with a far-flung wrist and ankle (2 limbs of 13: the 75th percentile barely
    # moves, the extent does): squeezed into 304 px.
    neck = J["neck"]
    for far in (J["r_wrist"], J["l_ankle"]):
        joints[:5, far] = joints[:5, neck] + 4 * (joints[:5, far] - joints[:5, neck])
        visible[:5, far] = True
    visible[:5, [J["r_elbow"], neck, J["head_top"]]] = True
    expected = genjson_scale(joints, visible)
    assert np.isfinite(expected).all()
    span = np.array([np.ptp(joints[i, visible[i]], axis=0).max() for i in range(41)])
    squeezed = np.isclose(expected, TARGET_DIST * span / (BOX - PSIZE), rtol=1e-12)
    assert 3 <= squeezed.sum() <= 10, squeezed.sum()
    np.testing.assert_allclose(lsp.mpi_like_scale(joints, visible), expected, rtol=1e-9)


def test_the_quantile_is_matlabs_not_numpys_default():
    # 4 visible limbs normalised to 1, 2, 3, 4 (by hand): MATLAB's 0.75 quantile is 3.5, numpy's
    # default (linear) 3.25. Person 0 fixes the limb ratios at 1 for the limbs used below.
    person = np.zeros((14, 2))
    chain = {"neck": (0, 0), "head_top": (0, -1), "r_hip": (0, 1), "r_shoulder": (1, 0),
             "l_wrist": (-1, 0)}
    for name, xy in chain.items():
        person[J[name]] = xy
    visible = np.zeros(14, bool)
    visible[[J[n] for n in chain]] = True
    # Limbs among these: neck-head (ref), r_hip-neck, r_shoulder-neck, l_wrist-neck, all ratio 1.
    other = person.copy()
    other[J["r_hip"]] = (0, 2)
    other[J["r_shoulder"]] = (3, 0)
    other[J["l_wrist"]] = (-4, 0)
    scale = lsp.mpi_like_scale(np.stack([person, other, person]), np.stack([visible] * 3))
    # Medians over the three people of r_hip/ref etc. are 1 (two of three are 1).
    assert scale[1] == pytest.approx(matlab_quantile(np.array([1.0, 2, 3, 4]), 0.75) / 35)
    assert scale[1] == pytest.approx(3.5 / 35)


def test_limbs_without_a_ratio_are_dropped_like_matlabs_quantile():
    rng = np.random.default_rng(3)
    joints = random_people(rng, 6)
    visible = np.ones((6, 14), bool)
    visible[:5, J["r_wrist"]] = False     # r_wrist seen only in person 5 ...
    visible[5, J["head_top"]] = False     # ... whose neck-head is not: the limb has no ratio
    expected = genjson_scale(joints, visible)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(lsp.mpi_like_scale(joints, visible), expected, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# The registry's lsp+lspet: LSPET then LSP 1-1000 for training, LSP 1001-2000 for testing.

def test_registry_lsp_plus_lspet(tmp_path, small_lsp):
    require_shared([images.LSPET_ROOT / "joints.mat", images.LSPET_ROOT / "images" / "im00001.jpg"],
                   "the LSP Extended copy (shared/datasets/lspet)")
    lsp_root, joints, flags, sizes = small_lsp
    lspet_root = images.lspet_subset(tmp_path / "lspet", 30)
    config = tiny_config()
    config.data.dataset = "lsp+lspet"
    config.data.paths.lsp = str(lsp_root)
    config.data.paths.lspet = str(lspet_root)

    train = registry.get("lsp+lspet").read(config.data, "train")
    assert len(train) == 1030
    assert list(train.image_paths[:30]) == [str(lspet_root / f"images/im{i:05d}.jpg") for i in range(1, 31)]
    assert list(train.image_paths[30:]) == [str(lsp_root / f"images/im{i:04d}.jpg") for i in range(1, 1001)]
    raw = scipy.io.loadmat(str(lspet_root / "joints.mat"))["joints"]
    np.testing.assert_allclose(train.joints[:30], raw[:, :2].transpose(2, 0, 1) - 1, atol=1e-4)
    np.testing.assert_array_equal(train.visibility[:30], np.where(raw[:, 2].T == 1, 2, 0))
    np.testing.assert_array_equal(train.joints[30:], (joints[:1000] - 1).astype(np.float32))
    np.testing.assert_array_equal(train.visibility[30:], np.where(flags[:1000] == 0, 2, 1))
    np.testing.assert_array_equal(train.center[30:], ((sizes[:1000] - 1) / 2).astype(np.float32))
    # Scaled together, as genJSON.m did: the limb ratios come from all 1030 people.
    together = np.concatenate([raw[:, :2].transpose(2, 0, 1) - 1, joints[:1000] - 1])
    visible = np.concatenate([raw[:, 2].T == 1, flags[:1000] == 0])
    np.testing.assert_allclose(train.scale, 200 * genjson_scale(together, visible), rtol=1e-5)

    test = registry.get("lsp+lspet").read(config.data, "test")
    assert len(test) == 1000
    assert list(test.image_paths) == [str(lsp_root / f"images/im{i:04d}.jpg") for i in range(1001, 2001)]

    source = registry.open_split(config.data, "train")
    assert source.size == 1030
    first, last = source.load(0), source.load(1029)
    with Image.open(lspet_root / "images/im00001.jpg") as image:
        assert first["image"].shape == (image.size[1], image.size[0], 3)
    assert last["image"].shape == (sizes[999][1], sizes[999][0], 3)
    assert registry.open_split(config.data, "test").size == 1000


# ---------------------------------------------------------------------------------------------
# LSPET's held-out split (data.heldout_every): fixed by index, disjoint from training.

def test_lspet_heldout_split_is_every_kth_person_and_leaves_train(tmp_path):
    require_shared([images.LSPET_ROOT / "joints.mat", images.LSPET_ROOT / "images" / "im00001.jpg"],
                   "the LSP Extended copy (shared/datasets/lspet)")
    root = images.lspet_subset(tmp_path / "lspet", 30)
    config = tiny_config()
    config.data.dataset, config.data.paths.lspet = "lspet", str(root)
    everyone = registry.get("lspet").read(config.data, "train")
    assert len(everyone) == 30
    with pytest.raises(ConfigError, match="heldout_every"):
        registry.get("lspet").read(config.data, "heldout")

    config.data.heldout_every = 10
    heldout = registry.get("lspet").read(config.data, "heldout")
    train = registry.get("lspet").read(config.data, "train")
    assert list(heldout.image_paths) == [str(root / f"images/im{i:05d}.jpg") for i in (1, 11, 21)]
    assert len(train) == 27 and not set(train.image_paths) & set(heldout.image_paths)
    # The same people and scales as in the whole file (scaled together, then split).
    np.testing.assert_array_equal(heldout.scale, everyone.scale[[0, 10, 20]])
    np.testing.assert_array_equal(train.joints, everyone.joints[np.arange(30) % 10 != 0])
    assert registry.open_split(config.data, "heldout").size == 3


@pytest.mark.parametrize("changes, message", [
    ({"heldout_every": -1}, "must be an integer >= 0"),
    ({"heldout_every": 10, "source": "tfds"}, "needs data.source='files'"),
    ({"eval_split": "heldout"}, "needs data.heldout_every >= 1"),
])
def test_heldout_config_errors_name_the_key(tmp_path, changes, message):
    from cpm_jax import configs
    config = tiny_config()
    config.data.dataset, config.data.paths.lspet = "lspet", str(tmp_path)
    config.data.update(changes)
    with pytest.raises(ConfigError, match=rf"data\.(heldout_every|eval_split).*{re.escape(message)}"):
        configs.validate(config, registry.DATASETS)


def test_heldout_every_is_refused_where_there_is_no_heldout_split():
    from cpm_jax import configs
    config = tiny_config()          # synthetic: its "heldout" split is drawn, not set aside
    config.data.heldout_every = 10
    with pytest.raises(ConfigError, match=r"data\.heldout_every.*no held-out split"):
        configs.validate(config, registry.DATASETS)
