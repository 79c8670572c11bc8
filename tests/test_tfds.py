"""TFDS builds (data_pipelines/tfds_builders.py): built offline from a manual directory in
array_record shards, read back by random access equal to the raw files."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cpm_jax.errors import BadExampleError, DataError
from data_pipelines import lsp, sources, tfds_builders
from tests.conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
LSPET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "lspet"
SUBSET = 24
FIELDS = ("joints", "visibility", "center", "scale", "others_joints", "others_visibility", "head_box")


def assert_same_records(built: sources.Source, raw: sources.Source) -> None:
    assert built.size == raw.size and built.num_parts == raw.num_parts
    for i in range(raw.size):
        a, b = built.load(i), raw.load(i)
        assert set(a) == set(b), i
        assert a["image"].dtype == np.uint8 and a["image"].shape == b["image"].shape, i
        np.testing.assert_array_equal(a["image"], b["image"], err_msg=f"image {i}")
        for key in FIELDS:
            assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, (i, key)
            assert np.shape(a[key]) == np.shape(b[key]), (i, key)
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} of example {i}")


def write_lspet(manual: Path, joints: np.ndarray) -> Path:
    """An LSPET-layout manual dir: joints.mat (14 x 3 x N, 1-based, flag 1 visible), images/."""
    (manual / "images").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(manual / "joints.mat", {"joints": joints})
    return manual


def image_name(i: int) -> str:
    return f"im{i + 1:05d}.jpg"


@pytest.fixture(scope="module")
def lspet_subset(tmp_path_factory):
    """The first SUBSET samples of the real LSPET (images symlinked), built in 3 shards."""
    require_shared(LSPET / "joints.mat", "the real LSPET (shared/datasets/lspet), to subset")
    tmp = tmp_path_factory.mktemp("lspet")
    joints = scipy.io.loadmat(LSPET / "joints.mat")["joints"]
    assert joints.shape[:2] == (14, 3)
    manual = write_lspet(tmp / "manual", joints[:, :, :SUBSET])
    for i in range(SUBSET):
        (manual / "images" / image_name(i)).symlink_to(LSPET / "images" / image_name(i))
    start = time.monotonic()
    sizes = tfds_builders.build("lspet", str(manual), str(tmp / "tfds"), num_shards=3)
    seconds = time.monotonic() - start
    print(f"\nbuilt the {SUBSET}-image LSPET subset in {seconds:.2f} s")
    return manual, tmp / "tfds", sizes


def test_lspet_subset_reads_back_equal_to_raw_files(lspet_subset):
    manual, data_dir, sizes = lspet_subset
    assert sizes == {"train": SUBSET}
    shards = sorted((data_dir / "cpm_lspet" / tfds_builders.VERSION).glob("cpm_lspet-train.array_record-*"))
    assert [s.name[-14:] for s in shards] == [f"{k:05d}-of-00003" for k in range(3)]

    built = tfds_builders.source("lspet", "train", str(data_dir))
    raw = sources.from_annotations(lsp.read(str(manual), "lspet", "train"))
    assert built.name == "lspet/train"
    assert_same_records(built, raw)
    for i in (0, 9, SUBSET - 1):  # the stored bytes are the file's bytes, in the reader's order
        data, _ = built._fetch(i)
        assert data == (manual / "images" / image_name(i)).read_bytes()
        where = built._describe(i)
        assert "lspet" in where and "train" in where and f"example {i} " in where
        assert f"images/{image_name(i)}" in where


def test_lspet_subset_through_tfds_data_source(lspet_subset):
    """The build is an ordinary TFDS array_record dataset: `tfds.data_source` reads it."""
    import tensorflow_datasets as tfds
    _, data_dir, _ = lspet_subset
    data = tfds.data_source("cpm_lspet", split="train", data_dir=str(data_dir), download=False)
    assert len(data) == SUBSET
    assert [int(data[i]["index"]) for i in range(SUBSET)] == list(range(SUBSET))
    path = data[5]["image_path"]
    assert (path.decode() if isinstance(path, bytes) else path) == f"images/{image_name(5)}"


def test_training_reads_the_build_when_the_config_says_tfds(lspet_subset):
    """`data.source = "tfds"` feeds training batches from the build, equal to those from the files."""
    from data_pipelines import pipeline
    from tests.conftest import tiny_config
    manual, data_dir, _ = lspet_subset
    config = tiny_config()
    config.data.dataset, config.data.paths.lspet = "lspet", str(manual)
    from_files = next(pipeline.train_batches(config, 1, start_step=3))
    config.data.source, config.data.tfds_data_dir = "tfds", str(data_dir)
    from_build = next(pipeline.train_batches(config, 1, start_step=3))
    assert from_build.keys() == from_files.keys()
    for key in from_files:
        np.testing.assert_array_equal(from_build[key], from_files[key], err_msg=key)


def synthetic_lspet(manual: Path, n: int = 4) -> Path:
    """n LSPET samples with small images in the awkward encodings: RGB JPEG, grayscale JPEG,
    CMYK JPEG, PNG content under a .jpg name."""
    rng = np.random.default_rng(0)
    size = (48, 40)  # width, height
    xy = rng.uniform(5, 35, size=(n, 14, 2))
    joints = np.concatenate([xy + 1.0, np.ones((n, 14, 1))], axis=-1).transpose(1, 2, 0)
    write_lspet(manual, joints)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        path = manual / "images" / image_name(i)
        kind = i % 4
        if kind == 0:
            image.save(path, format="JPEG", quality=90)
        elif kind == 1:
            image.convert("L").save(path, format="JPEG")
        elif kind == 2:
            image.convert("CMYK").save(path, format="JPEG")
        else:
            image.save(path, format="PNG")
    return manual


def test_odd_encodings_decode_identically(tmp_path):
    manual = synthetic_lspet(tmp_path / "manual")
    assert tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds")) == {"train": 4}
    built = tfds_builders.source("lspet", "train", str(tmp_path / "tfds"))
    assert_same_records(built, sources.from_annotations(lsp.read(str(manual), "lspet", "train")))


def test_missing_build_names_data_dir_and_how_to_build(tmp_path):
    with pytest.raises(DataError) as error:
        tfds_builders.source("lspet", "train", str(tmp_path / "nothing"))
    message = str(error.value)
    assert str(tmp_path / "nothing") in message
    assert "python -m data_pipelines.build_tfds --dataset lspet" in message


def test_unknown_split_and_dataset(tmp_path):
    manual = synthetic_lspet(tmp_path / "manual", n=2)
    tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="no split 'test'.*train"):
        tfds_builders.source("lspet", "test", str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="unknown TFDS dataset 'coco'"):
        tfds_builders.source("coco", "train", str(tmp_path / "tfds"))


def test_overwrite_rebuilds_and_a_tfrecord_build_is_refused(tmp_path):
    manual = synthetic_lspet(tmp_path / "manual", n=3)
    tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds"))
    scipy.io.savemat(manual / "joints.mat",
                     {"joints": scipy.io.loadmat(manual / "joints.mat")["joints"][:, :, :2]})
    assert tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds")) == {"train": 3}
    assert tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds"), overwrite=True) == {"train": 2}

    # A build in a format without random access (as `tfds build` makes without --file_format
    # array_record) is refused with the way out; simulated by relabelling this one's format.
    info = tmp_path / "tfds" / "cpm_lspet" / tfds_builders.VERSION / "dataset_info.json"
    info.write_text(info.read_text().replace('"array_record"', '"tfrecord"'))
    with pytest.raises(ValueError, match="tfrecord format, which has no random access"):
        tfds_builders.source("lspet", "train", str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="tfrecord build.*overwrite"):
        tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds"))
    assert tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds"), overwrite=True) == {"train": 2}
    assert tfds_builders.source("lspet", "train", str(tmp_path / "tfds")).size == 2


def test_missing_image_fails_the_build_naming_file_and_index(tmp_path):
    manual = synthetic_lspet(tmp_path / "manual", n=4)
    (manual / "images" / image_name(2)).unlink()
    with pytest.raises(BadExampleError) as error:
        tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds"))
    message = str(error.value)
    assert image_name(2) in message and "example 2" in message
    with pytest.raises(DataError, match="no TFDS build"):  # nothing half-built is taken for a build
        tfds_builders.source("lspet", "train", str(tmp_path / "tfds"))


def test_a_build_of_an_older_version_must_be_rebuilt(tmp_path):
    manual = synthetic_lspet(tmp_path / "manual", n=2)
    tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds"))
    folder = tmp_path / "tfds" / "cpm_lspet"
    (folder / tfds_builders.VERSION).rename(folder / "1.0.0")        # as the previous code built it
    with pytest.raises(DataError) as error:
        tfds_builders.source("lspet", "train", str(tmp_path / "tfds"))
    message = str(error.value)
    assert message.startswith(f"{folder / '1.0.0'} is a TFDS build of lspet of version 1.0.0; "
                              f"this code reads version {tfds_builders.VERSION} (")
    assert "head_box" in message
    assert f"python -m data_pipelines.build_tfds --dataset lspet --manual_dir MANUAL_DIR " \
           f"--data_dir {tmp_path / 'tfds'}" in message
    # Rebuilding (no --overwrite needed) makes the current version next to the old one.
    assert tfds_builders.build("lspet", str(manual), str(tmp_path / "tfds")) == {"train": 2}
    assert tfds_builders.source("lspet", "train", str(tmp_path / "tfds")).size == 2


def test_a_manual_dir_of_the_other_lsp_layout_is_named(tmp_path):
    manual = synthetic_lspet(tmp_path / "manual", n=2)               # LSPET's 14 x 3 x N
    with pytest.raises(DataError, match=r"joints\.mat: 'joints' is 14 x 3 x 2, the LSP Extended layout "
                                        r".*the lsp build's manual_dir must be the LSP folder"):
        tfds_builders.build("lsp", str(manual), str(tmp_path / "tfds"))


def test_missing_manual_dir_gives_the_instructions(tmp_path):
    with pytest.raises(AssertionError, match="lspet_dataset.zip"):
        tfds_builders.build("lspet", str(tmp_path / "absent"), str(tmp_path / "tfds"))


def test_command_line_builds_and_prints_split_sizes(tmp_path):
    manual = synthetic_lspet(tmp_path / "manual", n=3)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "data_pipelines.build_tfds", "--dataset", "lspet",
         "--manual_dir", str(manual), "--data_dir", str(tmp_path / "tfds")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Building lspet" in result.stdout
    assert "train 3 examples" in result.stdout
    assert tfds_builders.source("lspet", "train", str(tmp_path / "tfds")).size == 3


def write_images(folder: Path, names, size=(640, 480), mode="RGB") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(set(names))):
        Image.new(mode, size, 40 + 30 * i).save(folder / name, format="JPEG")


def test_mpii_builds_valid_split_only_with_detections_mat(tmp_path):
    from data_pipelines import mpii
    from tests import mat_files
    people = lambda *centres: [  # noqa: E731  (people with all 16 points around each centre)
        {"objpos": c, "scale": 1.5, "head": (1, 2, 3, 4),
         "points": [{"id": k, "x": c[0] + 5.0 * k, "y": c[1] + 3.0 * k, "is_visible": 1}
                    for k in range(16)]} for c in centres]
    images = [{"name": "a.jpg", "people": people((100.0, 100.0), (300.0, 200.0))},
              {"name": "b.jpg", "people": people((200.0, 150.0))}]
    manual = tmp_path / "manual"
    write_images(manual / "images", [im["name"] for im in images])
    mat_files.write_mpii_release(manual / mpii.RELEASE_FILE, images)
    assert tfds_builders.build("mpii", str(manual), str(tmp_path / "no_valid")) == {"train": 3}

    mat_files.write_tompson_validation(manual / tfds_builders.MPII_VALIDATION_FILE, [(1, 2)])
    assert tfds_builders.build("mpii", str(manual), str(tmp_path / "tfds")) == {"train": 2, "valid": 1}
    validation = str(manual / tfds_builders.MPII_VALIDATION_FILE)
    for split in ("train", "valid"):
        built = tfds_builders.source("mpii", split, str(tmp_path / "tfds"))
        raw = mpii.read(str(manual), split, validation_file=validation)
        assert_same_records(built, sources.from_annotations(raw))
        assert np.isfinite(built.load(0)["head_box"]).all()             # MPII's head boxes are stored
        assert built.load(0)["others_joints"].shape[0] == raw.others_joints.shape[1]


def test_flic_builds_train_and_test_with_nine_parts(tmp_path):
    from data_pipelines import flic
    from tests import mat_files
    columns = {c: (100.0 + 10 * c, 150.0 + 5 * c) for c in mat_files.FLIC_ANNOTATED_COLUMNS}
    examples = [{"filepath": "a.jpg", "coords": columns, "torsobox": (100, 120, 200, 300)},
                {"filepath": "a.jpg", "coords": columns, "torsobox": (110, 130, 210, 310)},
                {"filepath": "b.jpg", "coords": columns, "torsobox": (100, 120, 200, 300), "istest": 1}]
    manual = tmp_path / "manual"
    write_images(manual / "images", [e["filepath"] for e in examples], mode="L")
    mat_files.write_flic_examples(manual / "examples.mat", examples)
    assert tfds_builders.build("flic", str(manual), str(tmp_path / "tfds")) == {"train": 2, "test": 1}
    for split in ("train", "test"):
        built = tfds_builders.source("flic", split, str(tmp_path / "tfds"))
        assert built.num_parts == 9
        assert_same_records(built, sources.from_annotations(flic.read(str(manual), split)))
