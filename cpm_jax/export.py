"""A trained CPM exported for serving runtimes: TensorFlow SavedModel, TensorFlow Lite, ONNX.

    python -m cpm_jax.export --pretrained lspet_cpu --out exported/lspet_cpu
    python -m cpm_jax.export --workdir runs/lsp --out exported/lsp [--formats savedmodel,tflite,onnx] [--overwrite]

Writes into --out the asked formats (default all three: saved_model/, model.tflite, model.onnx)
and model_card.json (what the input and output are, how to crop a person, the skeleton, the
training config, held-out scores, the source's SHA-256, the converters' versions and the checks).
Each file is loaded back in its own runtime and compared with JAX's beliefs on held-out crops
before anything reaches --out; a stage's progress line goes to stderr, one line per format to
stdout, e.g.
    export: onnx -> exported/lsp/model.onnx (6.5 MB, 1.9 s); onnxruntime on 8 held-out crops: max |beliefs - JAX| 7.5e-07
An export predicts in its runtime with `python -m cpm_jax.predict --model exported/lsp/model.onnx
photo.jpg` (cpm_jax/serving/runtimes.py loads it back, checked against the card).

Errors (checked before any work: neither or both of --pretrained and --workdir, an unknown
--formats value or a missing converter, an --out that cannot be written or already holds an export
without --overwrite; then a workdir without a checkpoint, a corrupt shipped model, a file whose
beliefs differ from JAX's by over 1e-3) print one line naming the flag, file or directory and exit
with status 1; --out is then left as it was.
"""
import json
import os
import sys
import time

from absl import flags

from cpm_jax import cli, errors, runtime
from cpm_jax.serving import export, runtimes

FLAGS = flags.FLAGS


def load_model(pretrained: str | None, workdir: str | None):
    """(config, variables, source for the card, held-out scores or None) of the model named."""
    if pretrained:
        from cpm_jax.model import pretrained as shipped
        config, variables, info = shipped.load(pretrained)
        return config, variables, {"pretrained": pretrained, "step": info["source"].get("step"),
                                   "sha256": info["sha256"]}, info.get("heldout")
    from cpm_jax.training import state
    config, variables, step = state.restore_trained(workdir)
    checkpoint = os.path.join(os.path.abspath(workdir), "checkpoints", str(step))
    heldout, metrics = None, os.path.join(workdir, "metrics.json")
    if os.path.exists(metrics):
        try:
            with open(metrics) as f:
                heldout = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise errors.CheckpointError(f"{metrics}: cannot read it ({error}); move it aside to export "
                                         "without held-out scores") from error
    return config, variables, {"workdir": os.path.abspath(workdir), "step": int(step),
                               "sha256": runtimes.sha256_of(checkpoint)}, heldout


def main(argv) -> None:
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected argument {argv[1]!r}: the model is --pretrained NAME or --workdir DIR")
    if bool(FLAGS.pretrained) == bool(FLAGS.workdir):
        raise errors.InputError("give the model with exactly one of --pretrained NAME and --workdir DIR")
    formats = export.parse_formats(FLAGS.formats)
    export.check_out(FLAGS.out, FLAGS.overwrite)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    config, variables, source, heldout = load_model(FLAGS.pretrained, FLAGS.workdir)
    log(f"export: {'pretrained ' + FLAGS.pretrained if FLAGS.pretrained else 'workdir ' + FLAGS.workdir} "
        f"(step {source.get('step')}, {config.model.input_size}x{config.model.input_size}, {config.model.num_stages} "
        f"stages, {config.model.num_parts} parts) loaded in {time.perf_counter() - started:.1f} s")
    card, seconds = export.export(config, variables, source, heldout, FLAGS.out, formats, FLAGS.overwrite, log)
    for line in export.result_lines(card, FLAGS.out, seconds):
        print(line, flush=True)


if __name__ == "__main__":
    flags.DEFINE_string("pretrained", None, "A shipped model's name (pretrained/<name>.npz) or the path of its .npz.")
    flags.DEFINE_string("workdir", None, "A training workdir: its newest checkpoint is exported.")
    flags.DEFINE_string("out", None, "The export directory (made if missing).")
    flags.DEFINE_string("formats", ",".join(export.FORMATS), f"Comma-separated, from {','.join(export.FORMATS)}.")
    flags.DEFINE_bool("overwrite", False, "Replace an export already in --out.")
    flags.mark_flags_as_required(["out"])
    cli.run(main)
