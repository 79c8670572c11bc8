"""A config's network described without running it: parameter counts (total and per stage),
output shape, receptive fields and forward multiply-adds, from `architecture`'s layer lists and
`jax.eval_shape` of the Flax model (`python -m cpm_jax.summary` prints it)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cpm_jax.model import architecture
from cpm_jax.model import cpm as cpm_model


def count(tree) -> int:
    """How many numbers a parameter tree (or its shapes) holds."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def describe(model_config: ml_collections.ConfigDict) -> dict:
    """The summary of a `model` config block; shapes by `jax.eval_shape`, nothing computed."""
    m = model_config
    model = cpm_model.CPM(m)
    image = jax.ShapeDtypeStruct((1, m.input_size, m.input_size, 3), jnp.float32)
    cells = architecture.pooled_size(m.input_size, architecture.image_trunk(m))
    center = jax.ShapeDtypeStruct((1, cells, cells, 1), jnp.float32)
    variables = jax.eval_shape(lambda i, c: model.init(jax.random.key(0), i, c), image, center)
    output = jax.eval_shape(model.apply, variables, image, center)
    params = variables["params"]
    macs = architecture.forward_multiply_adds(m)
    return {
        "params": count(params),
        "params_per_stage": [sum(count(params[k]) for k in group)
                             for group in architecture.stage_parameter_groups(m.num_stages)],
        "output_shape": list(output.shape),
        "receptive_field_px": architecture.stage_receptive_fields(m),
        "gmacs": round(macs / 1e9, 2),
        "gflops": round(2 * macs / 1e9, 2),
    }
