"""Training loop: data-parallel `jax.pmap` steps, Orbax checkpoints, held-out evaluation.

    python -m cpm_jax.train --config experiments/synthetic.py --workdir runs/demo [--config.x=y]

Every `training.eval_every` steps (0: only at the end) and at the end, the training evaluator
(`evaluators.CropEvaluator`) scores every stage on the evaluation split; the end's result goes to
`<workdir>/metrics.json` with pictures (skeletons.png, beliefs_by_stage.png).
"""
import functools
import json
import os

import flax
import jax
import ml_collections
import numpy as np
from absl import flags, logging
from flax.training import train_state
from ml_collections import config_flags

from cpm_jax import checkpointing, cli, configs, errors, losses, progress, runtime, state as train_states
from data_pipelines import registry


def train_step(state: train_state.TrainState, batch: dict, rng: jax.Array,
               intermediate_supervision: bool):
    """One step on this device's share of the batch; gradients and metrics averaged over 'batch'."""
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index("batch"))

    def loss_fn(params):
        beliefs = state.apply_fn({"params": params}, batch["image"], batch["center_map"],
                                 train=True, rngs={"dropout": rng})
        targets = batch["targets"]
        if "stage1_targets" in batch:
            targets = losses.stage_targets(targets, batch["stage1_targets"], beliefs.shape[1])
        return losses.cpm_loss(beliefs, targets, intermediate_supervision)

    (loss, stage_losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, "batch")
    metrics = jax.lax.pmean({"loss": loss, "stage_losses": stage_losses}, "batch")
    return state.apply_gradients(grads=grads), metrics


def log_step(step: int, num_steps: int, metrics, meter: progress.Progress, batch_size: int) -> None:
    """One log line: step, loss per stage, images/s and ETA."""
    metrics = jax.device_get(jax.tree.map(lambda x: x[0], metrics))
    stages = " ".join(f"{v:.3f}" for v in np.asarray(metrics["stage_losses"]))
    logging.info("step %d/%d  loss %.3f  [per stage %s]  %s", step, num_steps, metrics["loss"], stages,
                 meter.describe(batch_size))


def log_evaluation(step: int, result: "evaluators.Result") -> None:
    for t, s in zip(result.stages, result.per_stage):
        parts = " ".join(f"{k} {v:.2f}" for k, v in s["parts"].items() if v is not None)
        logging.info("step %d: held-out %s stage %d: %.3f  (%s)", step, result.label, t, s["total"], parts)


def write_report(workdir: str, step: int, result: "evaluators.Result", pictures: list[str]) -> dict:
    """`<workdir>/metrics.json`: the evaluator's result at `step` (fractions) and the pictures."""
    report = {
        "step": step, "dataset": result.dataset, "split": result.split,
        "num_examples": len(result.predictions), "metric": result.label,
        f"{result.label.lower()}_per_stage": result.totals,
        "final_stage": result.per_stage[-1], "pictures": pictures,
    }
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.training.num_steps` (resuming from the workdir's latest checkpoint) and
    returns the held-out evaluation written to `<workdir>/metrics.json`."""
    from cpm_jax import evaluators                   # these import TensorFlow: not for --help
    from data_pipelines import pipeline
    configs.validate(config, registry.DATASETS)
    t = config.training
    num_devices = jax.local_device_count()
    for key, devices in (("global_batch_size", jax.device_count()), ("eval_batch_size", num_devices)):
        if t[key] % devices:
            raise errors.ConfigError(f"config.training.{key} = {t[key]}: must be divisible by the "
                                     f"{devices} devices")
    checkpointing.write_config(workdir, config)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    state = train_states.create(config, init_rng)
    mngr = checkpointing.manager(workdir, t.keep_checkpoints)
    state, start_step = checkpointing.restore_latest(mngr, state)
    if start_step:
        logging.info("resuming from step %d in %s", start_step, workdir)
    evaluator = evaluators.CropEvaluator(config)

    p_state = flax.jax_utils.replicate(state)
    p_step = jax.pmap(functools.partial(train_step, intermediate_supervision=config.loss.intermediate_supervision),
                      axis_name="batch", donate_argnums=(0,))
    p_rng = flax.jax_utils.replicate(dropout_rng)
    meter = progress.Progress(t.num_steps, start_step)
    batches = pipeline.train_batches(config, num_devices, start_step, (jax.process_index(), jax.process_count()))
    try:
        for step in range(start_step + 1, t.num_steps + 1):
            p_state, metrics = p_step(p_state, next(batches), p_rng)
            meter.update(step)
            if step % t.log_every == 0 or step == t.num_steps:
                log_step(step, t.num_steps, metrics, meter, t.global_batch_size)
            if step % t.checkpoint_every == 0 or step == t.num_steps:
                checkpointing.save(mngr, step, flax.jax_utils.unreplicate(p_state))
                logging.info("saving checkpoint %d in %s", step, mngr.directory)
            if t.eval_every and step % t.eval_every == 0 and step != t.num_steps:
                log_evaluation(step, evaluator.run({"params": flax.jax_utils.unreplicate(p_state.params)}))
    finally:
        batches.close()
    mngr.wait_until_finished()
    variables = {"params": flax.jax_utils.unreplicate(p_state.params)}
    step = int(flax.jax_utils.unreplicate(p_state.step))
    result = evaluator.run(variables)
    log_evaluation(step, result)
    pictures = evaluator.write_pictures(variables, workdir, t.num_visualized)
    return write_report(workdir, step, result, pictures)


FLAGS = flags.FLAGS


def main(argv) -> None:
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    configs.validate(FLAGS.config, registry.DATASETS)  # before JAX starts: a bad value fails at once
    logging.info("JAX devices: %s", jax.devices())
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    metric = result["metric"]
    stages = "  ".join(f"stage {i}: {v:.3f}" for i, v in enumerate(result[f"{metric.lower()}_per_stage"], 1))
    print(f"held-out {metric} per stage  {stages}")
    print(f"wrote {FLAGS.workdir}/metrics.json and {', '.join(result['pictures'])}")


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.json and pictures.")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
