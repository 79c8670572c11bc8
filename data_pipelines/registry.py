"""One registry: `config.data.dataset` names a `Dataset` record holding every fact the code needs
about that dataset; everything else asks the record (`get(name)`), and an unknown name fails
with the known ones.

Real datasets are read from their official layout under `config.data.paths.<name>`
(`data.source = "files"`) or from a TFDS build in `data.tfds_data_dir` (`data.source = "tfds"`,
see tfds_builders.py). `lsp+lspet` is the paper's LSP training set: LSPET plus LSP 1-1000,
scaled together as the release did; its test split is LSP 1001-2000.

Adding a dataset: write a reader that returns a `records.Annotations`, then add one record to
`DATASETS` (or, in a test or a notebook, `register(Dataset(...))`).
"""
import dataclasses
import os
from typing import Callable

import ml_collections
import numpy as np

from cpm_jax import errors
from data_pipelines import lsp, records, skeleton, sources

SOURCE_KINDS = ("files", "tfds")           # config.data.source
PERSON_RULES = ("image", "annotated")      # where the test-time procedure looks (multiscale.py)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Everything about one dataset.

    benchmark: the `evaluate score --dataset` name whose official annotation files and joint
      order this dataset's prediction files follow (lsp, flic, mpii); None when there is no
      official benchmark (its predictions are scored with LSP-style PCK over labelled joints).
    person_rule: where the test-time procedure looks: "image" (the release's LSP rule: image
      centre, 0.8 x input / image height; LSP images are tight crops) or "annotated" (the
      record's centre and scale).
    """
    name: str
    skeleton: skeleton.Skeleton
    splits: tuple[str, ...]
    eval_split: str                      # scored by the training evaluator and `evaluate run`
    read: Callable[[ml_collections.ConfigDict, str], records.Annotations] | None  # None: synthetic
    tfds_parts: Callable[[str], list[tuple[str, str]]] | None  # split -> [(tfds name, split)]
    benchmark: str | None = None
    person_rule: str = "annotated"
    multi_person: bool = False           # records carry other people (stage-1 targets)
    # The config.data keys naming what each split reads from files (data.source = "files"):
    # split -> ("paths.lsp", ...); `check_files` (called by configs.validate) checks them.
    files: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.eval_split not in self.splits:
            raise ValueError(f"dataset {self.name!r}: eval_split {self.eval_split!r} is not one of {self.splits}")
        if self.person_rule not in PERSON_RULES:
            raise ValueError(f"dataset {self.name!r}: person_rule {self.person_rule!r}; known: {PERSON_RULES}")

    @property
    def num_parts(self) -> int:
        return self.skeleton.num_joints

    @property
    def metric(self) -> str:
        """The metrics.BENCHMARKS name the evaluators score this dataset with."""
        return self.benchmark or "labelled"


def _path(data: ml_collections.ConfigDict, name: str) -> str:
    path = data.paths.get(name) if "paths" in data else None
    if not path:
        raise _not_set(f"paths.{name}")
    return path


# What each file key of `Dataset.files` names, and an example value, for messages.
_WHAT = {
    "paths.lsp": ("the LSP folder (lsp_dataset: joints.mat and images/)", "/data/lsp_dataset"),
    "paths.lspet": ("the LSP Extended folder (lspet_dataset: joints.mat and images/)", "/data/lspet_dataset"),
    "paths.mpii": ("the MPII folder (the release's .mat file and images/)", "/data/mpii"),
    "paths.flic": ("the FLIC folder (examples.mat and images/)", "/data/FLIC"),
    "mpii_validation_file": ("Tompson et al.'s detections.mat, the validation people scored after training "
                             "(a path, or a name under config.data.paths.mpii)", "/data/mpii/detections.mat"),
    "tfds_data_dir": ("the folder `python -m data_pipelines.build_tfds` wrote the TFDS builds to", "/data/tfds"),
}


def _not_set(key: str) -> errors.ConfigError:
    what, example = _WHAT.get(key, ("a path", "PATH"))
    return errors.ConfigError(f"config.data.{key} is not set: {what}; e.g. --config.data.{key}={example}")


def check_files(data: ml_collections.ConfigDict, splits=None, dataset: Dataset | None = None) -> None:
    """ConfigError naming the key unless every file the `splits` of `data.dataset` read (default:
    all of its splits) is set and exists: `config.data.paths.lspet is not set: ...`,
    `config.data.paths.lsp = '/x': no such directory (...)`. Only names and existence are
    checked (nothing is read): a mistyped path fails before any work starts. `dataset`: the
    record (default `get(data.dataset)`)."""
    dataset = dataset or get(data.dataset)
    if data.get("source", "files") == "tfds":
        keys = ("tfds_data_dir",) if dataset.tfds_parts is not None else ()
    else:
        keys = tuple(dict.fromkeys(k for split in (splits or dataset.splits) for k in dataset.files.get(split, ())))
    for key in keys:
        value = data.paths.get(key.split(".", 1)[1]) if key.startswith("paths.") and "paths" in data else data.get(key)
        if not value:
            raise _not_set(key)
        value, what = str(value), _WHAT.get(key, ("a folder",))[0]
        if key == "mpii_validation_file":
            if not (os.path.isfile(value) or os.path.isfile(os.path.join(str(data.paths.get("mpii", "")), value))):
                raise errors.ConfigError(f"config.data.{key} = {value!r}: no such file (nor under "
                                         f"config.data.paths.mpii); expected {what}")
        elif not os.path.isdir(value):
            problem = "a file, not a directory" if os.path.exists(value) else "no such directory"
            raise errors.ConfigError(f"config.data.{key} = {value!r}: {problem}; expected {what}")


def _lsp_plus_lspet(data, split):
    if split == "train":
        return lsp.read_many([(_path(data, "lspet"), "lspet", "train"), (_path(data, "lsp"), "lsp", "train")],
                             "lsp+lspet")
    return lsp.read(_path(data, "lsp"), "lsp", split, "lsp+lspet")


def _lspet(data, split):
    """LSPET's people; with data.heldout_every = K, those whose 0-based index is a multiple of K
    are split "heldout" and the others "train" (without it, "train" is all of them)."""
    people = lsp.read(_path(data, "lspet"), "lspet", "train", "lspet")
    every = int(data.get("heldout_every", 0))
    if every <= 0:
        if split == "heldout":
            raise errors.ConfigError("dataset 'lspet': split 'heldout' needs config.data.heldout_every >= 1")
        return people
    held = np.arange(len(people)) % every == 0
    return people.take(np.flatnonzero(held if split == "heldout" else ~held))


def _mpii(data, split):
    from data_pipelines import mpii
    return mpii.read(_path(data, "mpii"), split, data.get("mpii_validation_file") or None)


def _flic(data, split):
    from data_pipelines import flic
    return flic.read(_path(data, "flic"), split)


DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    """Adds (or replaces) a record; returns it."""
    DATASETS[dataset.name] = dataset
    return dataset


for _record in (
    Dataset("synthetic", skeleton.LSP, ("train", "heldout"), "heldout", None, None),
    Dataset("lsp", skeleton.LSP, ("train", "test"), "test",
            lambda data, split: lsp.read(_path(data, "lsp"), "lsp", split, "lsp"),
            lambda split: [("lsp", split)], benchmark="lsp", person_rule="image",
            files={"train": ("paths.lsp",), "test": ("paths.lsp",)}),
    Dataset("lspet", skeleton.LSP, ("train", "heldout"), "train", _lspet,
            lambda split: [("lspet", split)], files={"train": ("paths.lspet",), "heldout": ("paths.lspet",)}),
    Dataset("lsp+lspet", skeleton.LSP, ("train", "test"), "test", _lsp_plus_lspet,
            lambda split: [("lspet", "train"), ("lsp", "train")] if split == "train" else [("lsp", split)],
            benchmark="lsp", person_rule="image",
            files={"train": ("paths.lspet", "paths.lsp"), "test": ("paths.lsp",)}),
    Dataset("mpii", skeleton.LSP, ("train", "valid"), "valid", _mpii, lambda split: [("mpii", split)],
            benchmark="mpii", multi_person=True,
            files={"train": ("paths.mpii",), "valid": ("paths.mpii", "mpii_validation_file")}),
    Dataset("flic", skeleton.FLIC, ("train", "test"), "test", _flic, lambda split: [("flic", split)],
            benchmark="flic", multi_person=True, files={"train": ("paths.flic",), "test": ("paths.flic",)}),
):
    register(_record)


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise errors.ConfigError(f"config.data.dataset = {name!r}: unknown dataset; known: "
                                 f"{', '.join(DATASETS)}")
    return DATASETS[name]


def eval_split(data: ml_collections.ConfigDict) -> str:
    """The split the evaluators score: `data.eval_split`, else the dataset's own."""
    return data.get("eval_split") or get(data.dataset).eval_split


def open_split(data: ml_collections.ConfigDict, split: str):
    """The source of `split` of `data.dataset`: `.load(i)` -> record, `.size` (None: endless)."""
    dataset = get(data.dataset)
    if split not in dataset.splits:
        raise errors.ConfigError(f"dataset {data.dataset!r}: unknown split {split!r}; known: "
                                 f"{', '.join(dataset.splits)}")
    if dataset.read is None:
        return sources.SyntheticSource(int(data.get("synthetic_seed", 0)), split, int(data.synthetic_image_size))
    skip = bool(data.get("skip_bad_examples", False))
    if data.get("source", "files") == "tfds":
        from data_pipelines import tfds_builders
        return sources.concatenate([tfds_builders.source(name, part, data.tfds_data_dir, skip)
                                    for name, part in dataset.tfds_parts(split)])
    return sources.from_annotations(dataset.read(data, split), skip)


def example_count(source, data: ml_collections.ConfigDict, requested: int = 0) -> int:
    """How many examples of `source` (from the start) an evaluation reads: `requested` if > 0,
    else the whole split, else (an endless split) `data.num_heldout`; never more than the split.
    Raises ConfigError when that is nothing."""
    count = requested or source.size or int(data.get("num_heldout", 0))
    if source.size is not None:
        count = min(count, source.size)
    if count <= 0:
        raise errors.ConfigError(f"{source.name}: nothing to evaluate (an endless split needs a count "
                                 "or config.data.num_heldout >= 1)")
    return count
