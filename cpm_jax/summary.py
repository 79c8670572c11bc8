"""Prints one JSON object describing a config's network, without running it.

    python -m cpm_jax.summary --config experiments/lsp_paper.py [--config.model.num_stages=3]

Keys: params (total), params_per_stage (stage 2 includes the shared image trunk), output_shape
(B, T, h, w, P+1) for batch 1, receptive_field_px (per stage, from the layer list), gmacs and
gflops (forward convolutions of one image, from the layer list; 1 MAC = 2 FLOPs).
"""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from cpm_jax import architecture, cli, configs, errors, model as cpm_model, runtime


def count(tree) -> int:
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
                             for group in cpm_model.stage_parameter_groups(m.num_stages)],
        "output_shape": list(output.shape),
        "receptive_field_px": architecture.stage_receptive_fields(m),
        "gmacs": round(macs / 1e9, 2),
        "gflops": round(2 * macs / 1e9, 2),
    }


FLAGS = flags.FLAGS


def main(argv) -> None:
    runtime.setup(tensorflow=False)  # no input pipeline here
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    configs.validate(FLAGS.config)
    print(json.dumps(describe(FLAGS.config.model)))


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.mark_flags_as_required(["config"])
    cli.run(main)
