"""Exporting a trained workdir as a shipped model (`model/pretrained.py`'s files) and checking one:
the check joints are computed from the exported (rounded) parameters, so that loading the file
reproduces them exactly.

    python -m cpm_jax.pretrained export --workdir runs/lspet_cpu --name lspet_cpu [--dtype float16]
    python -m cpm_jax.pretrained check --name lspet_cpu      # recompute the check, compare exactly
"""
import json
import os

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from cpm_jax import errors
from cpm_jax.evaluation import evaluators
from cpm_jax.model.pretrained import CHECK_EXAMPLES, DIRECTORY, load, paths, sha256
from cpm_jax.training import state
from data_pipelines import registry


def heldout_joints(config: ml_collections.ConfigDict, variables: dict, count: int = CHECK_EXAMPLES) -> np.ndarray:
    """(count, T, P, 2) every stage's joints, crop pixels, on the first `count` crops of the
    config's evaluation split (the canonical crop, as training's evaluator sees them)."""
    _, _, joints, _ = evaluators.CropEvaluator(config).beliefs(variables, count)
    return joints


def export(workdir: str, name: str, directory: str = DIRECTORY, dtype: str = "float16",
           note: str = "") -> dict:
    """Writes <name>.npz and <name>.json from the newest checkpoint of `workdir` (and its
    metrics.json, when there is one); returns the record. The check joints are computed from the
    exported (rounded) parameters, so that loading the file reproduces them exactly. Nothing is
    written before they are; both files are written aside and moved into place together."""
    if dtype not in ("float16", "float32"):
        raise errors.ConfigError(f"--dtype {dtype!r}: float16 or float32")
    config, variables, step = state.restore_trained(workdir)
    flat = {k: np.asarray(v).astype(dtype)
            for k, v in traverse_util.flatten_dict(jax.device_get(variables), sep="/").items()}
    # Everything that can fail on the data comes first; then the two files, moved in together.
    exported = traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in flat.items()}, sep="/")
    joints = heldout_joints(config, exported).tolist()
    metrics_path = os.path.join(workdir, "metrics.json")
    heldout = None
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            heldout = json.load(f)
        heldout.pop("pictures", None)             # the workdir's files: not shipped, not this record's
    os.makedirs(directory, exist_ok=True)
    npz, record = paths(name, directory)
    partial = npz + ".partial.npz"
    np.savez_compressed(partial, **flat)
    info = {
        "name": name, "file": os.path.basename(npz), "sha256": sha256(partial), "dtype": dtype,
        "num_params": int(sum(v.size for v in flat.values())), "bytes": os.path.getsize(partial),
        # How to reproduce it (the note: commands, machine, time), not where it was trained.
        "source": {"step": int(step)}, "note": note,
        "heldout": heldout,
        "check": {"split": registry.eval_split(config.data), "count": CHECK_EXAMPLES, "joints": joints},
        "config": recorded_config(config),
    }
    with open(record + ".partial", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(partial, npz)
    os.replace(record + ".partial", record)
    return info


def recorded_config(config: ml_collections.ConfigDict) -> dict:
    """The config as the record keeps it: dataset paths relative to the working directory (export
    runs from the checkout's root, the directory experiment files' paths are relative to), so that
    the record says where the data lies beside a checkout, not on the machine that trained it."""
    recorded = json.loads(config.to_json_best_effort())
    paths = recorded.get("data", {}).get("paths", {})
    for key, path in paths.items():
        if isinstance(path, str) and os.path.isabs(path):
            paths[key] = os.path.relpath(path)
    return recorded


def check(name: str, directory: str = DIRECTORY) -> tuple[bool, np.ndarray, np.ndarray]:
    """(whether the loaded model reproduces its recorded check joints exactly, recomputed, recorded)."""
    config, variables, info = load(name, directory)
    recorded = np.asarray(info["check"]["joints"], np.float32)
    recomputed = heldout_joints(config, variables, int(info["check"]["count"])).astype(np.float32)
    return bool(np.array_equal(recomputed, recorded)), recomputed, recorded
