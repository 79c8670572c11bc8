"""Ships a trained model, and checks a shipped one (files: `model/pretrained.py`; the work:
`training/release.py`).

    python -m cpm_jax.pretrained export --workdir runs/lspet_cpu --name lspet_cpu [--dtype float16]
    python -m cpm_jax.pretrained check --name lspet_cpu      # recompute the check, compare exactly

A shipped model is used by name wherever a workdir would be: `python -m cpm_jax.predict
--pretrained lspet_cpu photo.jpg`, `python -m cpm_jax.evaluate run --pretrained lspet_cpu`,
`--config.training.init_from=pretrained:lspet_cpu`.
"""
import sys

import numpy as np
from absl import app, flags

from cpm_jax import cli, runtime
from cpm_jax.model.pretrained import DIRECTORY, paths
from cpm_jax.training import release

FLAGS = flags.FLAGS


def main(argv) -> None:
    runtime.setup()
    if len(argv) != 2 or argv[1] not in ("export", "check"):
        raise app.UsageError("python -m cpm_jax.pretrained export|check --name NAME [--workdir DIR]")
    if argv[1] == "export":
        if not FLAGS.workdir:
            raise app.UsageError("export needs --workdir")
        info = release.export(FLAGS.workdir, FLAGS.name, FLAGS.directory, FLAGS.dtype, FLAGS.note)
        print(f"pretrained: wrote {paths(FLAGS.name, FLAGS.directory)[0]} ({info['bytes'] / 1e6:.2f} MB, "
              f"{info['num_params']:,} parameters, {info['dtype']}, step {info['source']['step']}) "
              f"sha256 {info['sha256']}")
        return
    same, recomputed, recorded = release.check(FLAGS.name, FLAGS.directory)
    if not same:
        moved = np.abs(recomputed - recorded).max()
        print(f"pretrained: {FLAGS.name}: the check joints differ from the recorded ones (up to {moved:.2f} px)",
              file=sys.stderr)
        sys.exit(1)
    print(f"pretrained: {FLAGS.name}: reproduces its {len(recorded)} recorded held-out crops exactly")


if __name__ == "__main__":
    flags.DEFINE_string("name", None, "Model name (pretrained/<name>.npz) or the path of its .npz.")
    flags.DEFINE_string("workdir", None, "export: the training workdir whose newest checkpoint is exported.")
    flags.DEFINE_string("directory", DIRECTORY, "Where the models are.")
    flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "export: how the parameters are stored.")
    flags.DEFINE_string("note", "", "export: how to reproduce the model: the commands that trained it, "
                        "the machine, the wall time (recorded in the .json; no path of this machine is).")
    flags.mark_flags_as_required(["name"])
    cli.run(main)
