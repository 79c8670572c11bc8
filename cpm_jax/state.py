"""The training state (parameters, optimiser state, step) of a config's CPM.

`create` initialises it; `abstract` gives its structure, shapes and dtypes without computing
anything (`jax.eval_shape`), which is what a checkpoint restore needs.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax.training import train_state

from cpm_jax import architecture, model as cpm_model, optimizers


def create(config: ml_collections.ConfigDict, rng: jax.Array) -> train_state.TrainState:
    """Initial state: parameters from `rng`, the optimiser of `config.optimizer`, step 0."""
    model = cpm_model.CPM(config.model)
    size = config.model.input_size
    image = jnp.zeros((1, size, size, 3), jnp.float32)
    center = jnp.zeros((1, size // architecture.STRIDE, size // architecture.STRIDE, 1), jnp.float32)
    params = jax.jit(lambda r: model.init(r, image, center, train=False))(rng)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optimizers.make(config.optimizer, params))
    # An int32 array step, as the train step returns it, so the second call does not recompile.
    return state.replace(step=jnp.zeros((), jnp.int32))


def abstract(config: ml_collections.ConfigDict) -> train_state.TrainState:
    """`create`'s result as shapes and dtypes (nothing is computed)."""
    return jax.eval_shape(functools.partial(create, config), jax.random.key(config.seed))
