"""The training state (parameters, optimiser state, step) of a config's CPM, and where it comes from.

`create` initialises it; `abstract` gives its structure, shapes and dtypes without computing
anything (`jax.eval_shape`), which is what a checkpoint restore needs; `restore_params` and
`restore_trained` read a workdir's newest checkpoint for inference; `shared_params` takes the
parameters a new run starts from (`training.init_from`: a workdir or a shipped model).
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax.training import train_state

from cpm_jax import errors, platform
from cpm_jax.model import architecture, pretrained
from cpm_jax.training import checkpointing, optimizers

# XLA:CPU's -O2 spends seconds compiling the random-bit generator of every parameter shape; -O1
# compiles the initialisation 2-5x faster with bit-identical parameters (docs/performance.md).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def create(config: ml_collections.ConfigDict, rng: jax.Array, shared: dict | None = None) -> train_state.TrainState:
    """Initial state: parameters from `rng`, except the top-level collections in `shared`
    ({name: tree}, from `shared_params`), which are taken as they are; the optimiser of
    `config.optimizer` (collections in `config.training.frozen` get none); step 0. One compiled
    program (`INIT_COMPILER_OPTIONS` on a CPU)."""
    options = INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(_initial_state(config), compiler_options=options)(rng, shared or {})


def abstract(config: ml_collections.ConfigDict) -> train_state.TrainState:
    """`create`'s result as shapes and dtypes (nothing is computed)."""
    return jax.eval_shape(_initial_state(config), jax.random.key(config.seed), {})


def _initial_state(config: ml_collections.ConfigDict):
    """(rng, shared) -> `create`'s state, to be traced."""
    model = platform.make_model(config.model)
    size = config.model.input_size
    image = jnp.zeros((1, size, size, 3), jnp.float32)
    center = jnp.zeros((1, size // architecture.STRIDE, size // architecture.STRIDE, 1), jnp.float32)
    frozen = tuple(config.get("training", {}).get("frozen", ()))

    def initial(rng, shared):
        params = {**model.init(rng, image, center, train=False)["params"], **shared}
        state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                              tx=optimizers.make(config.optimizer, params, frozen))
        # An int32 array step, as the train step returns it, so the second call does not recompile.
        return state.replace(step=jnp.zeros((), jnp.int32))

    return initial


def shared_params(config: ml_collections.ConfigDict, source: str) -> dict:
    """{name: tree} of the top-level parameter collections ("stage1", "trunk", ...) that
    `config`'s model shares with `source`: a workdir (its newest readable checkpoint, read with
    its own config.json), or a shipped model ("pretrained:NAME" or the path of its .npz; see
    pretrained.py). Raises CheckpointError naming `source` if it has no readable parameters,
    ConfigError if a shared collection's shapes differ or none is shared."""
    key = f"config.training.init_from = {source!r}"
    try:
        model = pretrained.named_by(source)
        if model is not None:
            params = pretrained.load(model)[1]["params"]
        else:
            params = restore_trained(source)[1]["params"]
    except errors.CheckpointError as error:
        raise errors.CheckpointError(f"{key}: {error}") from error
    mine = abstract(config).params
    shape = functools.partial(jax.tree.map, lambda x: tuple(x.shape))
    shared = {name: tree for name, tree in params.items() if name in mine}
    for name, tree in shared.items():
        if shape(tree) != shape(mine[name]):
            raise errors.ConfigError(f"{key}: its parameter collection {name!r} has other shapes than this "
                                     f"model's (config.model differs from {source}'s)")
    if not shared:
        raise errors.ConfigError(f"{key}: shares no parameter collection with this model")
    return shared


def restore_params(workdir: str, config: ml_collections.ConfigDict) -> tuple[dict, int]:
    """({"params": ...} of the newest readable checkpoint in `workdir`, its step), for inference.
    The structure comes from `abstract(config)` (nothing is initialised). Raises
    NoCheckpointError naming the directory when there is none, CheckpointError when none can be
    read (or none matches config.model)."""
    mngr, _ = checkpointing.open_latest(workdir)
    try:
        restored, step = checkpointing.restore_latest(mngr, abstract(config))
    finally:
        mngr.close()
    return {"params": restored.params}, step


def restore_trained(workdir: str) -> tuple[ml_collections.ConfigDict, dict, int]:
    """(the config `workdir` was trained with, {"params": ...} of its newest readable checkpoint,
    that checkpoint's step). NoCheckpointError naming the directory when it has no checkpoint
    (said before config.json is read), CheckpointError naming config.json or the unreadable
    checkpoints otherwise."""
    checkpointing.open_latest(workdir)[0].close()
    config = checkpointing.read_config(workdir)
    variables, step = restore_params(workdir, config)
    return config, variables, step
