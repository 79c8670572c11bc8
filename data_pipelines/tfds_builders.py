"""TFDS builders for LSP, LSPET, MPII and FLIC, built offline from a manual directory, and
random access to the builds (`source`).

Users download the datasets by hand (each builder's `MANUAL_DOWNLOAD_INSTRUCTIONS` says from where
and what layout `manual_dir` must have); a build packs one dataset into a few `array_record`
shards (TFDS's random-access format, which `tfds.data_source` reads), so that a pod reads a few
large files instead of thousands of JPEGs. Datasets (short name -> TFDS builder name, also the
folder under `data_dir`; prefixed because TFDS ships an unrelated `flic` builder):
  lsp    -> cpm_lsp    train (samples 1-1000), test (1001-2000)                 `lsp.read`
  lspet  -> cpm_lspet  train (all 10000)                                        `lsp.read`
  mpii   -> cpm_mpii   train; valid too when `<manual_dir>/detections.mat` (Tompson et al.'s
                       validation list) exists, and train then excludes it     `mpii.read`
  flic   -> cpm_flic   train, test                                              `flic.read`

Record i of a split is row i of the reader's table (keys are the indices; shuffling disabled):
`image` (the ORIGINAL file's bytes, not re-encoded, so decoding is bit-identical to decoding the
file), `image_path` (relative to manual_dir), `index`, and `records.Annotations.row`'s joints
(P, 2), visibility (P,), center (2,), scale, others_joints (K, P, 2), others_visibility (K, P),
head_box (4,) (x1 y1 x2 y2; NaN where none: all but MPII). P: 14 (LSP order), 9 for FLIC. Only
builds of the current `VERSION` are read; an older one is refused, naming the rebuild command.

Building (offline; GCS is never consulted): `build` (its docstring also covers TFDS's own CLI) or
`python -m data_pipelines.build_tfds --dataset lspet --manual_dir DIR --data_dir DIR`. Reading:
`source("lspet", "train", data_dir)` -> `sources.Source`, whose `load(i)` decodes and checks
record i as `sources.from_annotations` does for the raw files.
"""
import abc
import os
import threading
import time
from typing import Optional

import numpy as np
from etils import epath

from cpm_jax import tf_loader
from cpm_jax.errors import BadExampleError, DataError

tf_loader.import_tensorflow()  # before tensorflow_datasets imports it: quietly, GPUs hidden
import tensorflow_datasets as tfds

from data_pipelines import records, skeleton, sources

VERSION = "1.1.0"
RELEASE_NOTES = {
    "1.0.0": "Original image bytes, common Annotations fields, reader order.",
    "1.1.0": "head_box (4,) float32 per example: MPII's head box, the PCKh normaliser (NaN elsewhere).",
}
MPII_VALIDATION_FILE = "detections.mat"  # Tompson et al.'s validation split, in manual_dir

_ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


class PoseBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """One dataset read by a `records.Annotations` reader from `dl_manager.manual_dir`.

    A subclass names its splits (`SPLITS`, or `splits(manual_dir)` where they depend on the
    files present), its number of parts, and its reader call (`read(manual_dir, split)`).
    Abstract, so TFDS registers only the subclasses."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = RELEASE_NOTES
    SPLITS: tuple[str, ...] = ("train",)
    NUM_PARTS: int = skeleton.LSP.num_joints
    DESCRIPTION = ""
    HOMEPAGE = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. (TFDS 4.9.10's own lookup needs the `importlib_resources` backport, which
        it requires only on Python < 3.9, and would fail without it.)"""
        return epath.Path(__file__)

    @abc.abstractmethod
    def read(self, manual_dir: str, split: str) -> records.Annotations:
        """The reader's table for `split` of the files in `manual_dir`."""

    def splits(self, manual_dir: str) -> tuple[str, ...]:
        """The splits this manual_dir yields."""
        return self.SPLITS

    def _info(self) -> tfds.core.DatasetInfo:
        p = self.NUM_PARTS
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # record i of a split is the reader's row i
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_,
                                              doc="original encoded image file bytes"),
                "image_path": tfds.features.Text(doc="image file relative to manual_dir"),
                "index": tfds.features.Scalar(np.int64, doc="position in the split"),
                "joints": tfds.features.Tensor(shape=(p, 2), dtype=np.float32),
                "visibility": tfds.features.Tensor(shape=(p,), dtype=np.int32),
                "center": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "scale": tfds.features.Scalar(np.float32),
                "others_joints": tfds.features.Tensor(shape=(None, p, 2), dtype=np.float32),
                "others_visibility": tfds.features.Tensor(shape=(None, p), dtype=np.int32),
                "head_box": tfds.features.Tensor(shape=(4,), dtype=np.float32,
                                                 doc="x1 y1 x2 y2, 0-based pixels; NaN: none"),
            }),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = os.fspath(dl_manager.manual_dir)  # raises with the instructions if absent
        return {split: self._generate_examples(manual_dir, split)
                for split in self.splits(manual_dir)}

    def _generate_examples(self, manual_dir: str, split: str):
        ann = self.read(manual_dir, split)
        if ann.num_parts != self.NUM_PARTS:
            raise DataError(f"{ann.dataset}: the reader gave {ann.num_parts} parts; the "
                             f"{self.name} builder stores {self.NUM_PARTS}")
        for index in range(len(ann)):
            path = os.fspath(ann.image_paths[index])
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as error:
                raise BadExampleError(f"{self.name[len('cpm_'):]}/{split} example {index}: cannot "
                                      f"read the image file {path}: {error.strerror}") from error
            row = ann.row(index)
            yield index, {
                "image": data,
                "image_path": os.path.relpath(path, manual_dir),
                "index": index,
                "joints": row["joints"], "visibility": row["visibility"],
                "center": row["center"], "scale": row["scale"],
                "others_joints": row["others_joints"],
                "others_visibility": row["others_visibility"],
                "head_box": row["head_box"],
            }


_LSP_LAYOUT = """
manual_dir must hold the unpacked release as it ships:
  <manual_dir>/joints.mat          {shape}
  <manual_dir>/images/{example}, ...
"""


class CpmLsp(PoseBuilder):
    """Leeds Sports Pose: 2000 images, 1000 train and 1000 test."""
    SPLITS = ("train", "test")
    DESCRIPTION = "Leeds Sports Pose (Johnson & Everingham, 2010), 14 joints, 1000 train / 1000 test."
    HOMEPAGE = "http://sam.johnson.io/research/lsp.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download lsp_dataset.zip from http://sam.johnson.io/research/lsp.html (mirrors exist, "
        "e.g. on Kaggle) and unzip it." + _LSP_LAYOUT.format(shape="3 x 14 x 2000", example="im0001.jpg"))

    def read(self, manual_dir, split):
        from data_pipelines import lsp
        return lsp.read(manual_dir, "lsp", split, name="lsp",
                        fix="the lsp build's manual_dir must be the LSP folder (lsp_dataset)")


class CpmLspet(PoseBuilder):
    """LSP Extended: 10000 training images."""
    SPLITS = ("train",)
    DESCRIPTION = "LSP Extended (Johnson & Everingham, 2011), 14 joints, 10000 train."
    HOMEPAGE = "http://sam.johnson.io/research/lspet.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download lspet_dataset.zip from http://sam.johnson.io/research/lspet.html (mirrors exist, "
        "e.g. on Kaggle) and unzip it." + _LSP_LAYOUT.format(shape="14 x 3 x 10000", example="im00001.jpg"))

    def read(self, manual_dir, split):
        from data_pipelines import lsp
        return lsp.read(manual_dir, "lspet", split, name="lspet",
                        fix="the lspet build's manual_dir must be the LSP Extended folder (lspet_dataset)")


class CpmMpii(PoseBuilder):
    """MPII Human Pose, mapped to the LSP joint order by `mpii.read`.

    Split `train` always; `valid` only when `<manual_dir>/detections.mat` (Tompson et al.'s
    validation people) exists. That file is then passed to `mpii.read` for both splits, so
    `train` leaves the validation people out. Without it `train` is every annotated training
    person. The official test images have no public labels and are not built."""
    DESCRIPTION = "MPII Human Pose (Andriluka et al., 2014), mapped to the 14 LSP joints."
    HOMEPAGE = "http://human-pose.mpi-inf.mpg.de/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Download from http://human-pose.mpi-inf.mpg.de/#download the images (mpii_human_pose_v1.tar.gz)
and the annotations (mpii_human_pose_v1_u12_2.zip) and unpack both into manual_dir:
  <manual_dir>/mpii_human_pose_v1_u12_1.mat
      (or <manual_dir>/mpii_human_pose_v1_u12_2/mpii_human_pose_v1_u12_1.mat, as the zip unpacks)
  <manual_dir>/images/*.jpg
Optional: Tompson et al.'s validation people (variables RELEASE_img_index, RELEASE_person_index)
at <manual_dir>/{MPII_VALIDATION_FILE} also builds the `valid` split (and train leaves them out).
"""

    def splits(self, manual_dir):
        return ("train", "valid") if self._validation_file(manual_dir) else ("train",)

    @staticmethod
    def _validation_file(manual_dir: str) -> Optional[str]:
        path = os.path.join(manual_dir, MPII_VALIDATION_FILE)
        return path if os.path.exists(path) else None

    def read(self, manual_dir, split):
        from data_pipelines import mpii
        return mpii.read(manual_dir, split, validation_file=self._validation_file(manual_dir))


class CpmFlic(PoseBuilder):
    """FLIC (Frames Labeled In Cinema), the release's 9-part model."""
    SPLITS = ("train", "test")
    NUM_PARTS = skeleton.FLIC.num_joints
    DESCRIPTION = "FLIC (Sapp & Taskar, 2013), 9 parts, the MODEC train / test split."
    HOMEPAGE = "https://bensapp.github.io/flic-dataset.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download FLIC.zip from https://bensapp.github.io/flic-dataset.html and unzip it; manual_dir is
the unzipped folder (FLIC/), holding
  <manual_dir>/examples.mat      variable `examples`, 1 x 5003
  <manual_dir>/images/*.jpg
"""

    def read(self, manual_dir, split):
        from data_pipelines import flic
        return flic.read(manual_dir, split)


BUILDERS: dict[str, type[PoseBuilder]] = {
    "lsp": CpmLsp, "lspet": CpmLspet, "mpii": CpmMpii, "flic": CpmFlic}


def builder_class(name: str) -> type[PoseBuilder]:
    """The builder of dataset `name` (lsp, lspet, mpii, flic)."""
    if name not in BUILDERS:
        raise DataError(f"unknown TFDS dataset {name!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[name]


def build_command(name: str, manual_dir: str = "MANUAL_DIR", data_dir: str = "DATA_DIR") -> str:
    return (f"python -m data_pipelines.build_tfds --dataset {name} --manual_dir {manual_dir} "
            f"--data_dir {data_dir}")


def build(name: str, manual_dir: str, data_dir: str, overwrite: bool = False,
          num_shards: Optional[int] = None) -> dict[str, int]:
    """Builds dataset `name` from the files in `manual_dir` into `data_dir` (array_record
    shards, offline) and returns {split: number of examples}.

    An existing build of the same version is kept unless `overwrite`; a build of another version
    stays next to the new one (delete its folder afterwards). `num_shards` per split; by default
    TFDS picks it from the size (shards of at most 1 GiB). Each build is
    `<data_dir>/cpm_<name>/<VERSION>/cpm_<name>-<split>.array_record-NNNNN-of-MMMMM` plus
    dataset_info.json and features.json. A missing or unreadable image raises BadExampleError
    naming the file and its index.

    The same from the command line: `python -m data_pipelines.build_tfds --dataset lspet
    --manual_dir /data/lspet --data_dir /data/tfds`. TFDS's own CLI, from the repository root,
    needs the builder named and registered with `--imports` (`tfds build
    data_pipelines/tfds_builders.py` fails: TFDS wants one builder per script) and array_record
    asked for (its default, tfrecord, has no random access):

        PYTHONPATH=. tfds build cpm_lspet --imports data_pipelines.tfds_builders \\
            --manual_dir /data/lspet --data_dir /data/tfds --file_format array_record

    (or `python -m tensorflow_datasets.scripts.cli.main build cpm_lspet ...`, same flags, no
    PYTHONPATH). tensorflow-datasets 4.9.10's CLI imports `apache_beam` and `mlcroissant` at start,
    which it does not install: `pip install apache-beam mlcroissant` first, or use the two ways
    above, which need neither."""
    cls, data_dir = builder_class(name), os.fspath(data_dir)
    existing = cls(data_dir=data_dir)
    if existing.is_prepared():
        if not overwrite:
            if _ARRAY_RECORD not in existing.info.available_file_formats():
                raise DataError(f"{existing.data_path} holds a "
                                 f"{_format_name(existing.info.file_format)} build "
                                 f"of {name}; rebuild it as array_record with overwrite=True "
                                 f"(--overwrite)")
            return _split_sizes(existing)
        existing.data_path.rmtree()
    builder = cls(data_dir=data_dir, file_format=_ARRAY_RECORD)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), try_download_gcs=False,
                                          num_shards=num_shards)
    builder.download_and_prepare(download_config=config)
    return _split_sizes(builder)


def _format_name(file_format) -> str:
    return getattr(file_format, "value", str(file_format))


def _split_sizes(builder: PoseBuilder) -> dict[str, int]:
    return {split: info.num_examples for split, info in builder.info.splits.items()}


def load_builder(name: str, data_dir: str) -> PoseBuilder:
    """The prepared builder of `name` in `data_dir`; DataError saying how to build it (or, for a
    build of an older version, that it must be rebuilt)."""
    builder = builder_class(name)(data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        older = _other_versions(os.path.join(os.fspath(data_dir), builder.name))
        if older:
            raise DataError(
                f"{os.path.join(os.fspath(data_dir), builder.name, older[-1])} is a TFDS build of {name} "
                f"of version {older[-1]}; this code reads version {builder.version} "
                f"({RELEASE_NOTES[str(builder.version)]}). Rebuild it from the hand-downloaded files "
                f"with `{build_command(name, data_dir=data_dir)}` (then delete the old folder)")
        raise DataError(
            f"no TFDS build of {name} (version {builder.version}) in data_dir {data_dir}: "
            f"expected {builder.data_path}. Build it from the hand-downloaded files with "
            f"`{build_command(name, data_dir=data_dir)}` or "
            f"`tfds_builders.build({name!r}, manual_dir, {os.fspath(data_dir)!r})`")
    if _ARRAY_RECORD not in builder.info.available_file_formats():
        raise DataError(
            f"the TFDS build of {name} in {builder.data_path} is in "
            f"{_format_name(builder.info.file_format)} format, which has no random access; "
            f"rebuild it as array_record with `{build_command(name, data_dir=data_dir)} --overwrite`")
    return builder


def source(name: str, split: str, data_dir: str, skip_bad_examples: bool = False) -> sources.Source:
    """Random access to `split` of the TFDS build of `name` in `data_dir`.

    `load(i)` decodes the stored original image bytes and checks the record as
    `sources.from_annotations` does for the raw files."""
    builder = load_builder(name, data_dir)
    if split not in builder.info.splits:
        raise DataError(f"{name} build in {builder.data_path}: no split {split!r}; built: "
                         f"{', '.join(builder.info.splits)}")
    data = builder.as_data_source(split, file_format=_ARRAY_RECORD)
    label = f"{name}/{split}"
    # `Source.load` calls describe(i) then fetch(i): one read serves both (per thread).
    last = threading.local()

    def example(index: int) -> dict:
        if getattr(last, "index", None) != index:
            last.example = data[index]
            last.index = index
        return last.example

    def fetch(index: int):
        ex = example(index)
        if int(ex["index"]) != index:
            raise BadExampleError(f"{describe(index)}: the build holds example "
                                  f"{int(ex['index'])} at this position")
        row = {"joints": np.asarray(ex["joints"], np.float32),
               "visibility": np.asarray(ex["visibility"], np.int32),
               "center": np.asarray(ex["center"], np.float32),
               "scale": np.float32(ex["scale"]),
               "others_joints": np.asarray(ex["others_joints"], np.float32),
               "others_visibility": np.asarray(ex["others_visibility"], np.int32),
               "head_box": np.asarray(ex["head_box"], np.float32)}
        return bytes(ex["image"]), row

    def describe(index: int) -> str:
        try:
            path = example(index)["image_path"]
            path = path.decode() if isinstance(path, bytes) else str(path)
        except Exception as error:  # pylint: disable=broad-except  (a message must not fail)
            path = f"stored image path unreadable: {type(error).__name__}: {error}"
        return f"{label} example {index} ({path}; TFDS build {builder.data_path})"

    return sources.Source(label, len(data), fetch, describe, builder.NUM_PARTS, skip_bad_examples)


def _other_versions(folder: str) -> list[str]:
    """The version folders (x.y.z) under a builder's folder other than VERSION, oldest first."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    versions = [n for n in names if n != VERSION and len(n.split(".")) == 3
                and all(p.isdigit() for p in n.split("."))]
    return sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


def build_and_report(name: str, manual_dir: str, data_dir: str, overwrite: bool = False,
                     num_shards: Optional[int] = None) -> dict[str, int]:
    """`build` with progress lines and the resulting split sizes (for the CLI)."""
    cls = builder_class(name)
    print(f"Building {name} (TFDS {cls.name} {VERSION}, array_record) from {manual_dir} "
          f"into {data_dir} ...", flush=True)
    start = time.monotonic()
    sizes = build(name, manual_dir, data_dir, overwrite=overwrite, num_shards=num_shards)
    path = os.path.join(os.fspath(data_dir), cls.name, VERSION)
    print(f"Built {name} in {time.monotonic() - start:.1f} s into {path}: "
          + ", ".join(f"{split} {n} examples" for split, n in sizes.items()), flush=True)
    return sizes
