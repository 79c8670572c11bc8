"""Bad examples (sources.py, records.check_record): a clear error naming the file and the index,
or, with skip_bad_examples, left out, counted and reported once per epoch. Odd but valid image
files (grayscale, CMYK, PNG content, alpha, palette) decode to RGB as OpenCV's imread does."""
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from cpm_jax.errors import BadExampleError, DataError
from data_pipelines import flic, lsp, mpii, pipeline, records, registry, sources
from tests import images
from tests.conftest import ROOT, python_env, tiny_config

H, W = 24, 32
N = 8
IMAGE_CASES = ("missing", "garbage", "truncated", "mat-as-image", "directory", "text", "fake-jpeg")
ROW_CASES = ("nan", "inf", "centre-outside", "centre-nan", "other-person-nan", "scale-zero",
             "nothing-labelled", "head-box-partial")
# What each case's message says (after "<dataset> example <i> (<file>): ").
MESSAGES = {
    "missing": "cannot read .*: No such file or directory",
    "garbage": r"not a JPEG or PNG image \(it is binary data beginning b'",
    "truncated": "cannot decode the image: image file is truncated",
    "mat-as-image": r"not a JPEG or PNG image \(it is a MATLAB \.mat file\)",
    "directory": "is a directory, not an image file",
    "text": r"not a JPEG or PNG image \(it is text beginning '<html>",
    "fake-jpeg": "cannot decode the image: it begins as a JPEG image but is damaged",
    "nan": r"NaN or infinite coordinates for joints \[3\]",
    "inf": r"NaN or infinite coordinates for joints \[7\]",
    "centre-outside": r"person centre \(42\.0, 12\.0\) lies outside the 32x24 image",
    "centre-nan": r"person centre \(nan, 3\.0\) lies outside",
    "other-person-nan": "NaN or infinite coordinates of another person",
    "scale-zero": "person scale 0.0 is not a positive number",
    "nothing-labelled": "no joint is labelled, so the person's centre and scale cannot be estimated",
    "head-box-partial": r"head box \[1\.0, 2\.0, nan, 4\.0\] is neither",
}
CASES = IMAGE_CASES + ROW_CASES


def good_rows(n: int = N):
    """Labels of n people well inside a W x H image."""
    rng = np.random.default_rng(0)
    joints = rng.uniform([4, 4], [W - 5, H - 5], (n, 14, 2))
    visibility = np.full((n, 14), 2)
    visibility[:, 5] = 1
    center = np.tile([(W - 1) / 2, (H - 1) / 2], (n, 1))
    scale = np.full(n, 40.0)
    return joints, visibility, center, scale


def noisy_jpeg(seed: int, height: int = 64, width: int = 64) -> bytes:
    """A JPEG big enough that half of it is a visibly truncated image."""
    rng = np.random.default_rng(seed)
    return images.encode(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), quality=90)


def write_table(tmp_path, bad: dict[int, str], n: int = N) -> records.Annotations:
    """n examples, image i at tmp_path/im<i>.jpg; the examples in `bad` broken as named."""
    joints, visibility, center, scale = good_rows(n)
    others_joints = np.zeros((n, 1, 14, 2))
    others_visibility = np.zeros((n, 1, 14), np.int32)
    head_boxes = np.full((n, 4), np.nan)
    head_boxes[0] = (1, 2, 3, 4)                       # a box is fine, and so is none (NaN)
    paths = []
    for i in range(n):
        path = tmp_path / f"im{i}.jpg"
        case = bad.get(i)
        if case == "missing":
            pass
        elif case == "garbage":
            images.write(path, np.random.default_rng(i).integers(0, 256, 3000, dtype=np.uint8).tobytes())
        elif case == "truncated":
            data = noisy_jpeg(i)
            images.write(path, data[:len(data) // 2])
        elif case == "mat-as-image":
            path = tmp_path / f"im{i}.mat"
            scipy.io.savemat(str(path), {"joints": np.ones((14, 2, 3))})
        elif case == "directory":
            path.mkdir()
        elif case == "text":
            images.write(path, b"<html>Not Found</html>")
        elif case == "fake-jpeg":
            images.write(path, b"\xff\xd8\xffjunk")            # a JPEG's first bytes, then nothing
        else:
            images.write_jpeg(path, images.gradient(H, W, i))
        if case == "nan":
            joints[i, 3] = (np.nan, 5.0)
        elif case == "inf":
            joints[i, 7] = (3.0, np.inf)
        elif case == "centre-outside":
            center[i] = (W + 10, H / 2)
        elif case == "centre-nan":
            center[i] = (np.nan, 3.0)
        elif case == "other-person-nan":
            others_visibility[i, 0, 2] = 2
            others_joints[i, 0, 2] = (np.nan, np.nan)
        elif case == "scale-zero":
            scale[i] = 0.0
        elif case == "nothing-labelled":          # as an LSPET sample without a visible joint
            visibility[i] = 0
            center[i] = np.nan
            scale[i] = np.nan
        elif case == "head-box-partial":
            head_boxes[i] = (1, 2, np.nan, 4)
        paths.append(str(path))
    return records.make("tiny", paths, joints, visibility, center, scale, others_joints, others_visibility,
                        head_boxes)


# ---------------------------------------------------------------------------------------------
# One bad example at a time.

@pytest.mark.parametrize("case", CASES)
def test_a_bad_example_raises_naming_file_and_index(tmp_path, case):
    ann = write_table(tmp_path, {5: case})
    source = sources.from_annotations(ann)
    for i in (0, 4, 6):
        assert source.load(i)["image"].shape == (H, W, 3)
    with pytest.raises(BadExampleError) as error:
        source.load(5)
    message = str(error.value)
    assert message.startswith(f"tiny example 5 ({ann.image_paths[5]}): "), message
    assert re.search(MESSAGES[case], message), message
    assert "BytesIO" not in message


@pytest.mark.parametrize("case", CASES)
def test_a_bad_example_is_skipped_and_counted(tmp_path, case):
    source = sources.from_annotations(write_table(tmp_path, {5: case}), skip_bad_examples=True)
    assert source.load(5) is None
    assert source.bad_examples.total_skipped == 1
    assert source.load(4) is not None and source.load(5) is None
    assert source.bad_examples.total_skipped == 2


@pytest.mark.parametrize("case", CASES)
def test_without_skipping_the_stream_fails_naming_the_file(tmp_path, case):
    ann = write_table(tmp_path, {2: case})
    ds = pipeline.record_stream(sources.from_annotations(ann), tf.data.Dataset.range(N))
    # The source's own error, not TensorFlow's wrapper with a traceback inside.
    with pytest.raises(BadExampleError) as error:
        for _ in pipeline.numpy_iterator(ds):
            pass
    assert str(error.value).startswith(f"tiny example 2 ({ann.image_paths[2]}): ")
    assert "Traceback" not in str(error.value) and "loader error" not in str(error.value)
    chained, seen = error.value, []
    while chained is not None:          # TensorFlow's error is not attached (nor its iterator)
        seen.append(chained)
        chained = chained.__cause__ or chained.__context__
    assert not any(isinstance(e, tf.errors.OpError) for e in seen), seen


def test_a_failed_stream_does_not_hang_the_interpreters_exit(tmp_path):
    # A live tf.data iterator that calls Python hangs the exit: the error must not keep it alive.
    script = f"""
import numpy as np, tensorflow as tf
from cpm_jax.errors import BadExampleError
from data_pipelines import pipeline, sources
from tests.test_bad_data import write_table
import pathlib
ann = write_table(pathlib.Path({str(tmp_path)!r}), {{1: "nothing-labelled", 3: "garbage"}})
stream = pipeline.record_stream(sources.from_annotations(ann), tf.data.Dataset.range(10 ** 6).map(lambda n: n % 8))
try:
    for record in pipeline.numpy_iterator(stream.prefetch(4)):
        pass
except BadExampleError as error:
    failure = error                     # kept until exit, as a CLI might
    print("caught:", error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=python_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "caught: tiny example 1 " in result.stdout and "no joint is labelled" in result.stdout


def test_batches_raise_the_sources_own_error(tmp_path):
    ann = write_table(tmp_path, {5: "nan"})
    ds = pipeline.record_stream(sources.from_annotations(ann), tf.data.Dataset.range(N))
    batches = pipeline.NumpyBatches(ds.map(lambda r: {"joints": r["joints"], "index": r["index"]})
                                    .batch(2, drop_remainder=True), 1)
    first = next(batches)
    assert first["joints"].shape == (1, 2, 14, 2)
    next(batches)
    with pytest.raises(BadExampleError, match=r"^tiny example 5 .*NaN or infinite coordinates for joints \[3\]$"):
        next(batches)
    with pytest.raises(StopIteration):             # closed after the error
        next(batches)
    # TensorFlow's own errors (not a source's) pass through unchanged.
    failing = pipeline.NumpyBatches(tf.data.Dataset.from_tensor_slices([1.0, -1.0]).map(
        lambda x: tf.debugging.check_numerics(tf.math.log(x), "log")).batch(2), 1)
    with pytest.raises(tf.errors.InvalidArgumentError):
        next(failing)


def test_a_data_error_inside_the_pipeline_arrives_as_itself(tmp_path):
    class FailingSource:
        num_parts, size = 14, 4

        def load(self, index):
            raise DataError(f"/data/lspet/joints.mat: not a MATLAB .mat file (index {index})")

    ds = pipeline.record_stream(FailingSource(), tf.data.Dataset.range(4))
    with pytest.raises(DataError, match=r"^/data/lspet/joints.mat: not a MATLAB .mat file \(index 0\)$"):
        next(pipeline.numpy_iterator(ds))


def test_joints_outside_the_image_are_not_bad(tmp_path):
    # Truncated people (LSPET) have labelled joints outside the picture: valid examples.
    ann = write_table(tmp_path, {})
    ann.joints[1, 0] = (-30.0, -4.0)
    ann.joints[1, 1] = (W + 50.0, H + 1.0)
    record = sources.from_annotations(ann).load(1)
    np.testing.assert_array_equal(record["joints"][:2], [(-30, -4), (W + 50, H + 1)])


def test_a_centre_on_the_border_pixel_is_inside(tmp_path):
    ann = write_table(tmp_path, {})
    ann.center[0] = (W - 1, H - 1)
    ann.center[1] = (0, 0)
    source = sources.from_annotations(ann)
    assert source.load(0) is not None and source.load(1) is not None


def test_unlabelled_nan_joints_give_finite_targets(tmp_path, monkeypatch):
    ann = write_table(tmp_path, {}, n=2)
    ann.joints[:, 4] = np.nan                  # not labelled: no peak, and no harm
    ann.visibility[:, 4] = 0
    ann.others_joints[:, 0] = np.nan           # another person, entirely unlabelled
    source = sources.from_annotations(ann)
    assert source.load(0) is not None and source.load(1) is not None    # check_record accepts them
    monkeypatch.setattr(registry, "open_split", lambda data, split: source)
    config = tiny_config()
    config.data.dataset = "mpii"               # a multi-person dataset: stage1_targets too
    example = next(iter(pipeline.train_examples(config).take(1).as_numpy_iterator()))
    assert np.isfinite(example["targets"]).all()
    assert np.isfinite(example["stage1_targets"]).all()
    assert example["targets"][..., 4].max() == 0


# ---------------------------------------------------------------------------------------------
# Several bad examples, skipped in the tf.data stream and reported at the end of each epoch.

BAD = {1: "missing", 4: "garbage", 6: "nan"}


class Warnings:
    """Records `sources.logging.warning` calls as formatted messages."""

    def __init__(self):
        self.messages = []

    def __call__(self, message, *args):
        self.messages.append(message % args)


def test_skipped_examples_leave_the_stream_and_are_reported_per_epoch(tmp_path, monkeypatch):
    warnings = Warnings()
    monkeypatch.setattr(sources.logging, "warning", warnings)
    ann = write_table(tmp_path, BAD, n=10)
    source = sources.from_annotations(ann, skip_bad_examples=True)

    # Epoch 1: positions 0..9.
    first = list(pipeline.record_stream(source, tf.data.Dataset.range(10)).as_numpy_iterator())
    good = [i for i in range(10) if i not in BAD]
    assert [int(r["index"]) for r in first] == good
    for r in first:
        assert r["image"].shape == (H, W, 3)
        np.testing.assert_array_equal(r["joints"], ann.joints[r["index"]])
    assert source.bad_examples.total_skipped == 3
    assert len(warnings.messages) == 1, warnings.messages
    report = warnings.messages[0]
    assert "skipped 3 bad examples" in report and "of 10" in report, report
    for i in BAD:
        assert ann.image_paths[i] in report and f"example {i}" in report

    # Epoch 2 (positions 10..19 read the same examples again): counted and reported again.
    second = list(pipeline.record_stream(source, tf.data.Dataset.range(10, 20),
                                         lambda n: (n % 10, n)).as_numpy_iterator())
    assert [int(r["index"]) for r in second] == good
    assert [int(r["key"]) for r in second] == [10 + i for i in good]
    assert source.bad_examples.total_skipped == 6
    assert len(warnings.messages) == 2 and "skipped 3 bad examples" in warnings.messages[1]


def test_the_report_names_only_the_first_few_files(tmp_path, monkeypatch):
    warnings = Warnings()
    monkeypatch.setattr(sources.logging, "warning", warnings)
    bad = {i: "missing" for i in range(8)}
    ann = write_table(tmp_path, bad, n=10)
    source = sources.from_annotations(ann, skip_bad_examples=True)
    for i in range(10):
        source.load(i)
    assert source.bad_examples.total_skipped == 8
    assert len(warnings.messages) == 1 and "skipped 8 bad examples" in warnings.messages[0]
    named = [i for i in range(8) if ann.image_paths[i] in warnings.messages[0]]
    assert named == [0, 1, 2, 3, 4]          # the first five, in the order they were met


def test_a_clean_epoch_is_not_reported(tmp_path, monkeypatch):
    warnings = Warnings()
    monkeypatch.setattr(sources.logging, "warning", warnings)
    source = sources.from_annotations(write_table(tmp_path, {3: "nan"}), skip_bad_examples=True)
    for i in range(N):
        source.load(i)
    assert len(warnings.messages) == 1
    for i in range(N):                       # the next epoch has only good examples ...
        source.load(i if i != 3 else 2)
    assert len(warnings.messages) == 1       # ... and says nothing


def test_skip_bad_examples_in_the_config_reaches_the_source(tmp_path):
    joints = good_rows(30)[0]
    root = images.write_layout(tmp_path / "lspet", joints + 1, np.ones((30, 14)), "lspet",
                               np.tile([W, H], (30, 1)))
    (root / "images" / "im00007.jpg").write_bytes(b"not a jpeg")
    config = tiny_config()
    config.data.dataset = "lspet"
    config.data.paths.lspet = str(root)
    with pytest.raises(BadExampleError, match="im00007.jpg"):
        registry.open_split(config.data, "train").load(6)
    config.data.skip_bad_examples = True
    source = registry.open_split(config.data, "train")
    assert source.load(6) is None and source.bad_examples.total_skipped == 1


# ---------------------------------------------------------------------------------------------
# An annotation file of an unexpected layout: the reader names it (the whole split is unusable).

def test_annotation_files_of_unexpected_layout_are_named(tmp_path):
    # DataError, not BadExampleError: skip_bad_examples cannot skip a whole split.
    (tmp_path / "lsp").mkdir()
    scipy.io.savemat(str(tmp_path / "lsp" / "joints.mat"), {"joints": np.ones((14, 2, 6))})
    with pytest.raises(DataError, match="shape") as error:
        lsp.read(str(tmp_path / "lsp"), "lsp", "train")
    assert str(tmp_path / "lsp" / "joints.mat") in str(error.value)
    assert not isinstance(error.value, BadExampleError)

    (tmp_path / "mpii").mkdir()
    scipy.io.savemat(str(tmp_path / "mpii" / mpii.RELEASE_FILE), {"joints": np.ones((14, 3, 6))})
    with pytest.raises(DataError, match="no variable 'RELEASE'") as error:
        mpii.read(str(tmp_path / "mpii"), "train")
    assert str(tmp_path / "mpii" / mpii.RELEASE_FILE) in str(error.value)
    assert not isinstance(error.value, BadExampleError)

    (tmp_path / "flic").mkdir()
    scipy.io.savemat(str(tmp_path / "flic" / flic.EXAMPLES_FILE), {"joints": np.ones((14, 3, 6))})
    with pytest.raises(DataError, match="no variable 'examples'") as error:
        flic.read(str(tmp_path / "flic"), "train")
    assert str(tmp_path / "flic" / flic.EXAMPLES_FILE) in str(error.value)
    assert not isinstance(error.value, BadExampleError)


# ---------------------------------------------------------------------------------------------
# Valid files in other colour models decode to RGB.

def load_only(tmp_path, data: bytes, name: str = "odd.jpg") -> np.ndarray:
    """Writes `data` as the single example's image and loads it through a source."""
    path = images.write(tmp_path / name, data)
    joints, visibility, center, scale = good_rows(1)
    center[0] = (0, 0)             # inside any image
    record = sources.from_annotations(records.make("odd", [path], joints, visibility, center, scale)).load(0)
    assert record["image"].dtype == np.uint8 and record["image"].ndim == 3 and record["image"].shape[2] == 3
    return record["image"]


def pil_rgb(data_path) -> np.ndarray:
    with Image.open(data_path) as image:
        return np.asarray(image.convert("RGB"))


def test_grayscale_jpeg_decodes_to_three_equal_channels(tmp_path):
    gray = images.gradient(H, W, 1)[..., 1]
    image = load_only(tmp_path, images.encode(gray, "JPEG", quality=95))
    np.testing.assert_array_equal(image, pil_rgb(tmp_path / "odd.jpg"))
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert np.abs(image[..., 0].astype(int) - gray).max() <= 6        # JPEG's loss only


def test_grayscale_png_content_under_a_jpg_name_decodes_exactly(tmp_path):
    gray = images.gradient(H, W, 2)[..., 0]
    image = load_only(tmp_path, images.encode(gray, "PNG"))
    np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, -1))


def test_rgb_png_content_under_a_jpg_name_decodes_exactly(tmp_path):
    rgb = images.gradient(H, W, 3)
    np.testing.assert_array_equal(load_only(tmp_path, images.encode(rgb, "PNG")), rgb)


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    rgb = images.gradient(H, W, 4)
    data = images.encode(rgb, "JPEG", mode="CMYK", quality=95)
    with Image.open(images.write(tmp_path / "probe.jpg", data)) as probe:
        assert probe.mode == "CMYK"
    image = load_only(tmp_path, data)
    np.testing.assert_array_equal(image, pil_rgb(tmp_path / "odd.jpg"))
    assert np.abs(image.astype(int) - rgb).mean() < 4                 # the same colours


def test_rgba_png_drops_alpha_and_palette_png_uses_its_palette(tmp_path):
    rgb = images.gradient(H, W, 5)
    alpha = np.full((H, W, 1), 7, np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    rgba.save(tmp_path / "rgba.png")
    image = load_only(tmp_path, (tmp_path / "rgba.png").read_bytes())
    np.testing.assert_array_equal(image, rgb)                         # imread: alpha dropped, not blended

    colours = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30]], np.uint8)
    labels = np.random.default_rng(6).integers(0, 3, (H, W))
    palette = Image.fromarray(labels.astype(np.uint8), "P")
    palette.putpalette(colours.ravel().tolist())
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_only(tmp_path, (tmp_path / "p.png").read_bytes(), "p.jpg"),
                                  colours[labels])


def test_sixteen_bit_grayscale_png_keeps_the_top_eight_bits(tmp_path):
    values = (np.arange(H * W).reshape(H, W) * 85 % 65536).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_only(tmp_path, (tmp_path / "deep.png").read_bytes())
    assert np.abs(image[..., 0].astype(int) - (values >> 8)).max() <= 1
