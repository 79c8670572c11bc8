"""Trained models shipped with the project: `pretrained/<name>.npz` (the parameters) and
`pretrained/<name>.json` (the config they were trained with, the file's SHA-256, where they come
from, their held-out scores, and a check: the joints they give on a few fixed held-out crops).

    python -m cpm_jax.pretrained export --workdir runs/lspet_cpu --name lspet_cpu [--dtype float16]
    python -m cpm_jax.pretrained check --name lspet_cpu      # recompute the check, compare exactly

A model is used by name (or by the path of its .npz) wherever a workdir would be:
`python -m cpm_jax.predict --pretrained lspet_cpu photo.jpg`, `python -m cpm_jax.evaluate run
--pretrained lspet_cpu`, `--config.training.init_from=pretrained:lspet_cpu` (training starts
from it), or `load(name)` in Python. The .npz holds {"params": ...} flattened to
"/"-joined paths, in float16 or float32; `load` gives float32 arrays. A missing file, a file
whose SHA-256 is not the recorded one, or parameters that do not fit the recorded config raise
CheckpointError naming the file.
"""
import hashlib
import json
import os
import sys
import zipfile

import ml_collections
import numpy as np
from absl import flags

from cpm_jax import errors

DIRECTORY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")
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
    from flax import traverse_util

    from cpm_jax import state
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
        {"params": state.abstract(config).params}, sep="/").items()}
    got = {k: tuple(v.shape) for k, v in flat.items()}
    if got != shapes:
        wrong = sorted(set(shapes) ^ set(got)) or [k for k in shapes if shapes[k] != got[k]]
        raise errors.CheckpointError(f"pretrained model {name!r}: {npz} does not fit its config's network "
                                     f"({len(wrong)} parameters differ, e.g. {wrong[0]})")
    return config, traverse_util.unflatten_dict(flat, sep="/"), info


def heldout_joints(config: ml_collections.ConfigDict, variables: dict, count: int = CHECK_EXAMPLES) -> np.ndarray:
    """(count, T, P, 2) every stage's joints, crop pixels, on the first `count` crops of the
    config's evaluation split (the canonical crop, as training's evaluator sees them)."""
    from cpm_jax import evaluators
    _, _, joints, _ = evaluators.CropEvaluator(config).beliefs(variables, count)
    return joints


def export(workdir: str, name: str, directory: str = DIRECTORY, dtype: str = "float16",
           note: str = "") -> dict:
    """Writes <name>.npz and <name>.json from the newest checkpoint of `workdir` (and its
    metrics.json, when there is one); returns the record. The check joints are computed from the
    exported (rounded) parameters, so that loading the file reproduces them exactly. Nothing is
    written before they are; both files are written aside and moved into place together."""
    import jax
    from flax import traverse_util

    from cpm_jax import checkpointing
    if dtype not in ("float16", "float32"):
        raise errors.ConfigError(f"--dtype {dtype!r}: float16 or float32")
    config, variables, step = checkpointing.restore_trained(workdir)
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
    os.makedirs(directory, exist_ok=True)
    npz, record = paths(name, directory)
    partial = npz + ".partial.npz"
    np.savez_compressed(partial, **flat)
    info = {
        "name": name, "file": os.path.basename(npz), "sha256": sha256(partial), "dtype": dtype,
        "num_params": int(sum(v.size for v in flat.values())), "bytes": os.path.getsize(partial),
        "source": {"workdir": os.path.abspath(workdir), "step": int(step)}, "note": note,
        "heldout": heldout,
        "check": {"split": _eval_split(config), "count": CHECK_EXAMPLES, "joints": joints},
        "config": json.loads(config.to_json_best_effort()),
    }
    with open(record + ".partial", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(partial, npz)
    os.replace(record + ".partial", record)
    return info


def check(name: str, directory: str = DIRECTORY) -> tuple[bool, np.ndarray, np.ndarray]:
    """(whether the loaded model reproduces its recorded check joints exactly, recomputed, recorded)."""
    config, variables, info = load(name, directory)
    recorded = np.asarray(info["check"]["joints"], np.float32)
    recomputed = heldout_joints(config, variables, int(info["check"]["count"])).astype(np.float32)
    return bool(np.array_equal(recomputed, recorded)), recomputed, recorded


def _eval_split(config) -> str:
    from data_pipelines import registry
    return registry.eval_split(config.data)


FLAGS = flags.FLAGS


def main(argv) -> None:
    from absl import app
    if len(argv) != 2 or argv[1] not in ("export", "check"):
        raise app.UsageError("python -m cpm_jax.pretrained export|check --name NAME [--workdir DIR]")
    if argv[1] == "export":
        if not FLAGS.workdir:
            raise app.UsageError("export needs --workdir")
        info = export(FLAGS.workdir, FLAGS.name, FLAGS.directory, FLAGS.dtype, FLAGS.note)
        print(f"pretrained: wrote {paths(FLAGS.name, FLAGS.directory)[0]} ({info['bytes'] / 1e6:.2f} MB, "
              f"{info['num_params']:,} parameters, {info['dtype']}, step {info['source']['step']}) "
              f"sha256 {info['sha256']}")
        return
    same, recomputed, recorded = check(FLAGS.name, FLAGS.directory)
    if not same:
        moved = np.abs(recomputed - recorded).max()
        print(f"pretrained: {FLAGS.name}: the check joints differ from the recorded ones (up to {moved:.2f} px)",
              file=sys.stderr)
        sys.exit(1)
    print(f"pretrained: {FLAGS.name}: reproduces its {len(recorded)} recorded held-out crops exactly")


if __name__ == "__main__":
    from cpm_jax import cli, runtime
    runtime.setup()
    flags.DEFINE_string("name", None, "Model name (pretrained/<name>.npz) or the path of its .npz.")
    flags.DEFINE_string("workdir", None, "export: the training workdir whose newest checkpoint is exported.")
    flags.DEFINE_string("directory", DIRECTORY, "Where the models are.")
    flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "export: how the parameters are stored.")
    flags.DEFINE_string("note", "", "export: a line on how the model was trained (the command, the time).")
    flags.mark_flags_as_required(["name"])
    cli.run(main)
