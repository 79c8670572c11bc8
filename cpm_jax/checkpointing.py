"""Orbax checkpoints in `<workdir>/checkpoints`, and the run's config beside them.

Orbax writes each step to a temporary directory and renames it when complete, so an interrupted
save never leaves a half-written checkpoint that a restart would pick up.
"""
import json
import os

import ml_collections
import orbax.checkpoint as ocp

from cpm_jax import errors
from cpm_jax.errors import NoCheckpointError

CONFIG_FILE = "config.json"


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(mngr: ocp.CheckpointManager, state):
    """(state, step) from the newest checkpoint, or (state, 0) unchanged if there is none.

    `state` supplies the structure, shapes and dtypes; a checkpoint that does not match it or
    cannot be read raises CheckpointError naming its directory."""
    step = mngr.latest_step()
    if step is None:
        return state, 0
    try:
        restored = mngr.restore(step, args=ocp.args.StandardRestore(state))
    except Exception as error:  # Orbax raises many types; name the directory whatever they are.
        raise errors.CheckpointError(f"cannot restore checkpoint {os.path.join(str(mngr.directory), str(step))}: "
                           f"{type(error).__name__}: {error}") from error
    return restored, step


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, json.JSONDecodeError) as error:
        raise errors.CheckpointError(f"cannot read the run's config {path}: {error}") from error


def open_latest(workdir: str) -> tuple[ocp.CheckpointManager, int]:
    """(read-only manager, newest step) of `<workdir>/checkpoints`, creating nothing; raises
    NoCheckpointError naming the directory when there is no workdir or no completed checkpoint."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(workdir):
        raise NoCheckpointError(f"{workdir}: no such directory (expected a training workdir with "
                                "checkpoints/ and config.json)")
    if not os.path.isdir(directory):
        raise NoCheckpointError(f"{workdir}: no checkpoint ({directory} does not exist); train "
                                "first with python -m cpm_jax.train --workdir ...")
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    step = mngr.latest_step()
    if step is None:
        raise NoCheckpointError(f"{workdir}: no completed checkpoint in {directory}")
    return mngr, step


def restore_params(workdir: str, config: ml_collections.ConfigDict) -> tuple[dict, int]:
    """({"params": ...} of the newest checkpoint in `workdir`, its step), for inference. The
    structure comes from `state.abstract(config)` (nothing is initialised). Raises
    NoCheckpointError naming the directory when there is none, CheckpointError when it does not
    match config.model."""
    from cpm_jax import state
    mngr, _ = open_latest(workdir)
    restored, step = restore_latest(mngr, state.abstract(config))
    return {"params": restored.params}, step
