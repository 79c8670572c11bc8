"""Prints one JSON object describing a config's network, without running it.

    python -m cpm_jax.summary --config experiments/lsp_paper.py [--config.model.num_stages=3]

Keys: params (total), params_per_stage (stage 2 includes the shared image trunk), output_shape
(B, T, h, w, P+1) for batch 1, receptive_field_px (per stage, from the layer list), gmacs and
gflops (forward convolutions of one image, from the layer list; 1 MAC = 2 FLOPs).
"""
import json

from absl import flags
from ml_collections import config_flags

from cpm_jax import cli, configs, errors, runtime
from cpm_jax.model.summary import describe

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
