"""How fast a config's CPM trains and predicts on this machine, and against PyTorch.

    python -m cpm_jax.bench --config experiments/synthetic.py [--batch 8] [--json] [--compare torch]
    python -m cpm_jax.bench --config experiments/lspet_cpu.py --parts inference \\
        --compare onnxruntime,tensorflow,tflite        # the exported model in serving runtimes

One run measures, on whatever backend JAX finds (`benchmarks/measure.py` says how):
  * train: the training step `train` runs, on a fixed random batch: compile time, the first
    step after compilation, the median and spread of `--steps` steps, as images/s;
  * inference: the model's forward pass (eval mode, one scale), images/s;
  * pipeline: the tf.data training pipeline alone, and "fed": training steps fed by it;
  * FLOPs per image (layer list and XLA), achieved FLOP/s against the device's peak and a large
    matrix product's rate, memory bandwidth, peak host and device memory (`benchmarks/hardware.py`);
  * layers (only when asked: `--parts train,layers`): each distinct convolution timed alone,
    forward and training, summed over the model (`benchmarks/layers.py`).
The "convolutions:" line counts a forward pass's convolutions by the form a CPU runs them in
and says whether oneDNN's kernels loaded. `--compare torch`: the same network in PyTorch
(`benchmarks/torch_peer.py`, the JAX parameters copied in), alternating rounds with JAX in one
process, JAX / PyTorch ratios; `--compare onnxruntime,tensorflow,tflite`: the model exported
(`cpm_jax.export`'s files) and its inference timed there beside JAX's (`benchmarks/exported.py`).

The table is for people; `--json` adds one JSON object as the last line (keys in
`benchmarks/report.summarise`). On a GPU or TPU host, `python -m cpm_jax.benchmarks.accelerator`
runs the prepared accelerator check (dtypes, largest batch, input pipeline by cores, a short run).
"""
import json

from absl import flags
from ml_collections import config_flags

from cpm_jax import cli, configs, errors, runtime
from cpm_jax.benchmarks.measure import DEFAULT_PARTS, PARTS, measure
from cpm_jax.benchmarks.report import summarise
from data_pipelines import registry

FLAGS = flags.FLAGS


def main(argv) -> None:
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    parts = tuple(p for p in FLAGS.parts if p)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise errors.ConfigError(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    configs.validate(config, registry.DATASETS if {"pipeline", "fed"} & set(parts) else None)
    batch = FLAGS.batch or config.training.global_batch_size
    out = measure(config, batch, FLAGS.steps, parts, ",".join(FLAGS.compare), FLAGS.pipeline_batches,
                  FLAGS.peak_gflops, on_progress=lambda line: print(f"bench: {line}", flush=True))
    print(summarise(out))
    if FLAGS.json:
        print(json.dumps(out))


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.mark_flags_as_required(["config"])
    flags.DEFINE_integer("batch", 0, "Images per step (0: the config's training.global_batch_size).", lower_bound=0)
    flags.DEFINE_integer("steps", 10, "Timed steps of each kind, after compilation and the first step.", lower_bound=1)
    flags.DEFINE_list("parts", list(DEFAULT_PARTS), f"What to measure, of: {', '.join(PARTS)}.")
    flags.DEFINE_list("compare", [], "Also time: torch (the same network in PyTorch; pip install -e "
                      "'.[bench]'), and/or the model exported (python -m cpm_jax.export) in onnxruntime, "
                      "tensorflow, tflite (inference; pip install -e '.[export]').")
    flags.DEFINE_integer("pipeline_batches", 20, "Batches timed of the input pipeline alone.", lower_bound=1)
    flags.DEFINE_float("peak_gflops", 0.0, "The device's FP32 (CPU) or compute-dtype peak, GFLOP/s (0: reckon it).")
    flags.DEFINE_bool("json", False, "Print one JSON object of every figure as the last line.")
    cli.run(main)
