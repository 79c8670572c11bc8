"""Training loop: data-parallel `jax.pmap` steps, Orbax checkpoints, held-out PCK at the end.

    python -m cpm_jax.train --config experiments/synthetic.py --workdir runs/demo [--config.x=y]
"""
import functools
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax.training import train_state
from ml_collections import config_flags

from cpm_jax import checkpointing, configs, evaluation, losses, model as cpm_model, optimizers
from data_pipelines import pipeline, registry


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> train_state.TrainState:
    model = cpm_model.CPM(config.model)
    size = config.model.input_size
    image = jnp.zeros((1, size, size, 3), jnp.float32)
    center = jnp.zeros((1, size // 8, size // 8, 1), jnp.float32)
    params = jax.jit(lambda r: model.init(r, image, center, train=False))(rng)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=optimizers.make(config.optimizer, params))
    # An int32 array step, as the train step returns it, so the second call does not recompile.
    return state.replace(step=jnp.zeros((), jnp.int32))


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


class Progress:
    """Logs step, loss per stage, images/s and ETA every `every` steps (compile time excluded)."""

    def __init__(self, first_step: int, num_steps: int, batch_size: int, every: int):
        self.num_steps, self.batch_size, self.every = num_steps, batch_size, every
        self.mark_step, self.mark_time = first_step, None

    def update(self, step: int, metrics) -> None:
        """`step` counts completed steps; the first call starts the clock."""
        if self.mark_time is None:
            self.mark_step, self.mark_time = step, time.perf_counter()
            return
        if step % self.every and step != self.num_steps:
            return
        metrics = jax.device_get(jax.tree.map(lambda x: x[0], metrics))
        elapsed = time.perf_counter() - self.mark_time
        rate = (step - self.mark_step) / max(elapsed, 1e-9)
        eta = (self.num_steps - step) / max(rate, 1e-9)
        stages = " ".join(f"{v:.3f}" for v in np.asarray(metrics["stage_losses"]))
        logging.info("step %d/%d  loss %.3f  [per stage %s]  %.1f img/s  ETA %dm%02ds", step,
                     self.num_steps, metrics["loss"], stages, rate * self.batch_size,
                     eta // 60, eta % 60)
        self.mark_step, self.mark_time = step, time.perf_counter()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.training.num_steps` (resuming from the workdir's latest checkpoint) and
    returns the held-out evaluation written to `<workdir>/metrics.json`."""
    configs.validate(config, registry.DATASETS)
    t = config.training
    num_devices = jax.local_device_count()
    for key, devices in (("global_batch_size", jax.device_count()), ("eval_batch_size", num_devices)):
        if t[key] % devices:
            raise ValueError(f"config.training.{key} = {t[key]}: must be divisible by the {devices} devices")
    checkpointing.write_config(workdir, config)
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    state = create_train_state(config, init_rng)
    mngr = checkpointing.manager(workdir, t.keep_checkpoints)
    state, start_step = checkpointing.restore_latest(mngr, state)
    if start_step:
        logging.info("resuming from step %d in %s", start_step, workdir)

    p_state = flax.jax_utils.replicate(state)
    p_step = jax.pmap(functools.partial(train_step, intermediate_supervision=config.loss.intermediate_supervision),
                      axis_name="batch", donate_argnums=(0,))
    p_rng = flax.jax_utils.replicate(dropout_rng)
    progress = Progress(start_step, t.num_steps, t.global_batch_size, t.log_every)
    batches = pipeline.train_batches(config, num_devices, start_step, (jax.process_index(), jax.process_count()))
    for step in range(start_step + 1, t.num_steps + 1):
        p_state, metrics = p_step(p_state, next(batches), p_rng)
        progress.update(step, metrics)
        if step % t.checkpoint_every == 0 or step == t.num_steps:
            checkpointing.save(mngr, step, flax.jax_utils.unreplicate(p_state))
            logging.info("saving checkpoint %d in %s", step, mngr.directory)
    mngr.wait_until_finished()
    state = flax.jax_utils.unreplicate(p_state)
    return evaluation.evaluate_and_report(config, cpm_model.CPM(config.model), state.params, workdir,
                                          int(state.step))


FLAGS = flags.FLAGS


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
    logging.info("JAX devices: %s", jax.devices())
    result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    stages = "  ".join(f"stage {i}: {v:.3f}" for i, v in enumerate(result["pck@0.2_per_stage"], 1))
    print(f"held-out PCK@0.2 per stage  {stages}")
    print(f"wrote {FLAGS.workdir}/metrics.json and {', '.join(result['pictures'])}")


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.json and pictures.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
