"""One registry: `config.data.dataset` names a dataset: its joint order, its splits, and how to
open a split as a source of records (sources.py).

Real datasets are read from their official layout under `config.data.paths.<name>`
(`data.source = "files"`) or from a TFDS build in `data.tfds_data_dir` (`data.source = "tfds"`,
see tfds_builders.py). `lsp+lspet` is the paper's LSP training set: LSPET plus LSP 1-1000,
scaled together as the release did; its test split is LSP 1001-2000.
"""
import dataclasses
from typing import Callable

import ml_collections

from data_pipelines import lsp, records, skeleton, sources

SOURCE_KINDS = ("files", "tfds")


@dataclasses.dataclass(frozen=True)
class Dataset:
    skeleton: skeleton.Skeleton
    splits: tuple[str, ...]
    eval_split: str                      # scored at the end of training
    read: Callable[[ml_collections.ConfigDict, str], records.Annotations] | None  # raw files
    tfds_parts: Callable[[str], list[tuple[str, str]]] | None  # split -> [(tfds name, split)]
    multi_person: bool = False           # records carry other people (stage-1 targets)

    @property
    def num_parts(self) -> int:
        return self.skeleton.num_joints


def _path(data: ml_collections.ConfigDict, name: str) -> str:
    path = data.paths.get(name) if "paths" in data else None
    if not path:
        raise ValueError(f"config.data.paths.{name} is not set: the directory of the {name} dataset "
                         "in its official layout")
    return path


def _lsp_plus_lspet(data, split):
    if split == "train":
        return lsp.read_many([(_path(data, "lspet"), "train"), (_path(data, "lsp"), "train")], "lsp+lspet")
    return lsp.read(_path(data, "lsp"), split, "lsp+lspet")


def _mpii(data, split):
    from data_pipelines import mpii
    return mpii.read(_path(data, "mpii"), split, data.get("mpii_validation_file") or None)


def _flic(data, split):
    from data_pipelines import flic
    return flic.read(_path(data, "flic"), split)


DATASETS: dict[str, Dataset] = {
    "synthetic": Dataset(skeleton.LSP, ("train", "heldout"), "heldout", None, None),
    "lsp": Dataset(skeleton.LSP, ("train", "test"), "test",
                   lambda data, split: lsp.read(_path(data, "lsp"), split, "lsp"),
                   lambda split: [("lsp", split)]),
    "lspet": Dataset(skeleton.LSP, ("train",), "train",
                     lambda data, split: lsp.read(_path(data, "lspet"), split, "lspet"),
                     lambda split: [("lspet", split)]),
    "lsp+lspet": Dataset(skeleton.LSP, ("train", "test"), "test", _lsp_plus_lspet,
                         lambda split: [("lspet", "train"), ("lsp", "train")] if split == "train"
                         else [("lsp", split)]),
    "mpii": Dataset(skeleton.LSP, ("train", "valid"), "valid", _mpii, lambda split: [("mpii", split)],
                    multi_person=True),
    "flic": Dataset(skeleton.FLIC, ("train", "test"), "test", _flic, lambda split: [("flic", split)],
                    multi_person=True),
}


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"config.data.dataset = {name!r}: unknown dataset; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def open_split(data: ml_collections.ConfigDict, split: str):
    """The source of `split` of `data.dataset`: `.load(i)` -> record, `.size` (None: endless)."""
    dataset = get(data.dataset)
    if split not in dataset.splits:
        raise ValueError(f"dataset {data.dataset!r}: unknown split {split!r}; known: {', '.join(dataset.splits)}")
    if dataset.read is None:
        return sources.SyntheticSource(int(data.get("synthetic_seed", 0)), split, int(data.synthetic_image_size))
    skip = bool(data.get("skip_bad_examples", False))
    if data.get("source", "files") == "tfds":
        from data_pipelines import tfds_builders
        return sources.concatenate([tfds_builders.source(name, part, data.tfds_data_dir, skip)
                                    for name, part in dataset.tfds_parts(split)])
    return sources.from_annotations(dataset.read(data, split), skip)
