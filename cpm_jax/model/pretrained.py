"""Trained models shipped with the project: `pretrained/<name>.npz` (the parameters, {"params": ...}
flattened to "/"-joined paths, float16 or float32) and `pretrained/<name>.json` (the config they
were trained with, the file's SHA-256, where they come from, their held-out scores, and a check:
the joints they give on a few fixed held-out crops). `load(name)` reads one as float32.

A model is named "pretrained:NAME" (`config.training.init_from`) or by NAME or the path of its .npz
(`--pretrained`). A missing file, a file whose SHA-256 is not the recorded one, or parameters that
do not fit the recorded config raise CheckpointError naming the file. Writing and checking them:
`training/release.py` (`python -m cpm_jax.pretrained export|check`).
"""
import hashlib
import json
import os
import zipfile

import ml_collections
import numpy as np
from flax import traverse_util

from cpm_jax import errors
from cpm_jax.model import cpm

DIRECTORY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "pretrained")
CHECK_EXAMPLES = 8        # held-out crops whose joints are recorded beside the parameters
RECORD_KEYS = ("sha256", "config", "source", "check")   # what load, check and the CLIs read
REFERENCE_PREFIX = "pretrained:"   # config.training.init_from = "pretrained:NAME"


def named_by(reference: str) -> str | None:
    """The model a reference names ("pretrained:NAME" -> NAME, a path to a .npz -> itself), or
    None when it names no shipped model (a training workdir)."""
    if reference.startswith(REFERENCE_PREFIX):
        return reference.removeprefix(REFERENCE_PREFIX)
    return reference if reference.endswith(".npz") else None


def paths(name: str, directory: str = DIRECTORY) -> tuple[str, str]:
    """(<name>.npz, <name>.json): in `directory`, or beside `name` when it is a path to a .npz."""
    if name.endswith(".npz"):
        return name, name[:-4] + ".json"
    return os.path.join(directory, f"{name}.npz"), os.path.join(directory, f"{name}.json")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_info(name: str, directory: str = DIRECTORY) -> dict:
    """The .json record of model `name`; CheckpointError naming the file when it is missing or unreadable."""
    npz, record = paths(name, directory)
    if not os.path.exists(record):
        known = sorted(f[:-5] for f in os.listdir(directory) if f.endswith(".json")) if os.path.isdir(directory) else []
        raise errors.NoCheckpointError(f"pretrained model {name!r}: {record} does not exist"
                                       + (f"; shipped: {', '.join(known)}" if known else ""))
    try:
        with open(record) as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise errors.CheckpointError(f"pretrained model {name!r}: cannot read {record}: {error}") from error
    missing = [k for k in RECORD_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise errors.CheckpointError(f"pretrained model {name!r}: {record} lacks {', '.join(missing)} "
                                     "(not a record written by `python -m cpm_jax.pretrained export`)")
    return info


def load(name: str, directory: str = DIRECTORY) -> tuple[ml_collections.ConfigDict, dict, dict]:
    """(config, {"params": ...} float32, the .json record) of model `name`, after checking the
    .npz's SHA-256 and that every parameter has the shape the config's network needs."""
    info = read_info(name, directory)
    npz, _ = paths(name, directory)
    if not os.path.exists(npz):
        raise errors.NoCheckpointError(f"pretrained model {name!r}: {npz} does not exist")
    found = sha256(npz)
    if found != info["sha256"]:
        raise errors.CheckpointError(f"pretrained model {name!r}: {npz} is corrupt or not the shipped file "
                                     f"(SHA-256 {found}, recorded {info['sha256']}); fetch it again")
    config = ml_collections.ConfigDict(info["config"])
    try:
        with np.load(npz) as arrays:
            flat = {k: arrays[k].astype(np.float32) for k in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise errors.CheckpointError(f"pretrained model {name!r}: cannot read {npz}: {error}") from error
    shapes = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(
        {"params": cpm.abstract_params(config.model)}, sep="/").items()}
    got = {k: tuple(v.shape) for k, v in flat.items()}
    if got != shapes:
        wrong = sorted(set(shapes) ^ set(got)) or [k for k in shapes if shapes[k] != got[k]]
        raise errors.CheckpointError(f"pretrained model {name!r}: {npz} does not fit its config's network "
                                     f"({len(wrong)} parameters differ, e.g. {wrong[0]})")
    return config, traverse_util.unflatten_dict(flat, sep="/"), info
