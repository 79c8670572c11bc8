"""The training job, `train_and_evaluate`, read top to bottom: validate the config; open the workdir
(lock, config.json, checkpoint managers) and restore or create the state in one place
(`restore_or_create`); then `train`: build the data, and loop (step, log, checkpoint, evaluate)
with data-parallel `jax.pmap` steps (step.py); finally evaluate and report (heldout.py:
metrics.json, pictures, heldout.jsonl, the best state in `<workdir>/best`). TensorBoard events
go to `<workdir>/tensorboard` (summaries.py).

A run can be stopped at any moment and continued by the same command:
  * killed (SIGKILL, a lost machine): the restart resumes from the newest readable checkpoint
    (checkpointing.py) and ends with parameters bit-identical to an uninterrupted run (same
    devices): step k depends only on the checkpointed state (parameters, optimiser state, step),
    the dropout key (seed, step, device) and the examples at stream positions (k - 1) x batch ..
    k x batch - 1, which the pipeline derives from (seed, position) alone;
  * preempted (SIGTERM, as Kubernetes and SLURM send): the current step finishes, a checkpoint
    is saved at it and the process exits 0 (`Preemption`);
  * diverged: a step with a non-finite loss or gradient is never applied (`train_step`); the run
    stops with errors.DivergenceError naming the step and stage(s), or, with
    `training.nonfinite = "skip"`, goes on without it.
A running `train` holds the workdir's lock (a second one is refused naming the holder), and a
config that would change the run a workdir holds is refused before anything is written
(checkpointing.check_same_run).
"""
import json
import os

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from flax.training import train_state

from cpm_jax import configs, errors, progress
from cpm_jax.training import checkpointing, gradients, optimizers
from cpm_jax.training import state as train_states
from cpm_jax.training.heldout import HeldOut, make_report
from cpm_jax.training.preemption import Preempted, Preemption
from cpm_jax.training.step import applied_updates, describe_nonfinite, host_metrics, parallel_train_step, replicate
from data_pipelines import registry


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.training.num_steps` (resuming from the workdir's newest readable
    checkpoint) and returns the held-out evaluation written to `<workdir>/metrics.json`.

    Raises Preempted after saving a checkpoint when asked to stop (SIGTERM); errors.DivergenceError
    on a non-finite step with training.nonfinite = "stop"; errors.ConfigError for a config that
    would change the run the workdir holds and errors.CheckpointError for a workdir held by
    another run or without a readable checkpoint (those two change nothing in the workdir)."""
    from cpm_jax.training import summaries
    configs.validate(config, registry.DATASETS)
    configs.resolve_dtype(config, jax.default_backend())   # config.json records the dtype it ran in
    check_batch_sizes(config.training)
    checkpointing.check_same_run(workdir, config)
    primary = jax.process_index() == 0
    with checkpointing.locked(workdir, jax.process_index()):
        if primary:
            checkpointing.write_config(workdir, config)
        mngr = checkpointing.manager(workdir, config.training.keep_checkpoints)
        best = checkpointing.best_manager(workdir)
        writer = summaries.open(os.path.join(workdir, "tensorboard"))
        try:
            state, start_step = restore_or_create(config, workdir, mngr)
            held_out = HeldOut(config, best, writer, workdir)
            state = train(config, state, start_step, mngr, writer, held_out)
            mngr.wait_until_finished()
            step = int(state.step)
            result = held_out(step, state)
            pictures = []
            if primary:
                pictures = held_out.evaluator.write_pictures({"params": state.params}, workdir,
                                                             config.training.num_visualized)
                pictures += gradients.pictures(config, workdir)  # gradients.png, drawn by `train`
            report = make_report(step, result, pictures)
            if primary:
                with open(os.path.join(workdir, "metrics.json"), "w") as f:
                    json.dump(report, f, indent=2)
            return report
        finally:
            writer.close()
            for m in (mngr, best):
                m.wait_until_finished()
                m.close()

def restore_or_create(config: ml_collections.ConfigDict, workdir: str, mngr) -> tuple[train_state.TrainState, int]:
    """(state, step): the newest readable checkpoint (unreadable newer ones set aside), restored
    into `state.abstract` (nothing initialised or compiled), or a new state at step 0 (the
    collections it shares with `training.init_from`'s checkpoint taken from there)."""
    restored, step, unreadable = checkpointing.restore_newest_readable(mngr, train_states.abstract(config))
    checkpointing.set_aside(mngr, workdir, unreadable)
    if step:
        logging.info("resumed from step %d in %s", step, mngr.directory)
        return restored, step
    init_rng, _ = jax.random.split(jax.random.key(config.seed))
    init_from = config.training.get("init_from", "")
    shared = train_states.shared_params(config, init_from) if init_from else None
    logging.info("starting from step 0 (no checkpoint in %s)%s", mngr.directory,
                 f"; {', '.join(shared)} from {init_from}" if shared else "")
    return train_states.create(config, init_rng, shared), 0

def train(config: ml_collections.ConfigDict, state: train_state.TrainState, start_step: int, mngr,
          writer, held_out: HeldOut) -> train_state.TrainState:
    """Steps start_step + 1 .. num_steps: log, checkpoint, evaluate, stop on preemption
    (Preempted) or divergence (errors.DivergenceError). Returns the final state (device 0).

    A step's finite flag is read once the next step has been dispatched (at a step that logs,
    checkpoints, evaluates or ends, at once), so the device never waits for the host between
    steps; a non-finite step is reported by its own number, at most one step late, and never
    reaches a checkpoint (its update was not applied, and every save checks first)."""
    from data_pipelines import pipeline
    t = config.training
    _, dropout_rng = jax.random.split(jax.random.key(config.seed))
    p_state = replicate(state)
    p_step = parallel_train_step(config)
    p_rng = replicate(dropout_rng)
    meter = progress.Progress(t.num_steps, start_step)
    schedule = optimizers.schedule(config.optimizer)
    skipped = 0
    # Gradient histograms (gradients.py), process 0; <workdir> is the checkpoints' parent.
    recorder = gradients.recorder(config, state.params, os.path.dirname(str(mngr.directory)), start_step)

    def check_finite(step: int, metrics: dict) -> None:
        nonlocal skipped
        if bool(metrics["finite"][0]):
            return
        problem = describe_nonfinite(step, host_metrics(metrics))
        if t.get("nonfinite", "stop") == "stop":
            raise errors.DivergenceError(divergence_message(problem, mngr))
        skipped += 1
        logging.warning("skipped %s; update not applied (%d step(s) skipped by this run)", problem, skipped)

    batches = pipeline.train_batches(config, jax.local_device_count(), start_step,
                                     (jax.process_index(), jax.process_count()))
    unchecked = None  # (step, metrics) whose finite flag has not been read yet
    try:
        with Preemption(mngr, start_step) as preemption:
            for step in range(start_step + 1, t.num_steps + 1):
                p_state, metrics = p_step(p_state, next(batches), p_rng)
                meter.update(step)
                if recorder:
                    recorder.add(step, metrics["grad_histograms"])  # stays on the device till a period ends
                if unchecked:
                    check_finite(*unchecked)  # the previous step: it has ended, this one is queued
                unchecked = (step, metrics)
                stop = preemption.reached(step)
                evaluate = t.eval_every and step % t.eval_every == 0 and step != t.num_steps
                if (step % t.log_every == 0 or step % t.checkpoint_every == 0 or step == t.num_steps
                        or stop or evaluate):
                    check_finite(*unchecked)  # before anything is logged, saved or evaluated
                    unchecked = None
                if step % t.log_every == 0 or step == t.num_steps:
                    m = host_metrics(metrics)
                    log_step(step, t.num_steps, m, meter, t.global_batch_size)
                    rate = float(schedule(max(applied_updates(p_state.opt_state) - 1, 0)))
                    writer.scalars(step, step_scalars(m, rate, meter.rate(), t.global_batch_size, skipped))
                if step % t.checkpoint_every == 0 or step == t.num_steps or stop:
                    checkpointing.save(mngr, step, flax.jax_utils.unreplicate(p_state))
                    logging.info("saving checkpoint %d in %s", step, mngr.directory)
                if stop:
                    if recorder:
                        recorder.finish(step)
                    mngr.wait_until_finished()
                    logging.warning("preempted: stopped after step %d with checkpoint %s/%d; the same command "
                                    "continues the run", step, mngr.directory, step)
                    raise Preempted(step, str(mngr.directory))
                if evaluate:
                    held_out(step, flax.jax_utils.unreplicate(p_state))
    finally:
        batches.close()
    if recorder:
        logging.info("gradient histograms: %s", ", ".join(recorder.finish(t.num_steps)))
    if skipped:
        logging.warning("%d step(s) of this run were skipped as non-finite (training.nonfinite = 'skip')", skipped)
    return flax.jax_utils.unreplicate(p_state)

def check_batch_sizes(t: ml_collections.ConfigDict) -> None:
    for key, devices in (("global_batch_size", jax.device_count()), ("eval_batch_size", jax.local_device_count())):
        if t[key] % devices:
            raise errors.ConfigError(f"config.training.{key} = {t[key]}: must be divisible by the "
                                     f"{devices} devices")

def log_step(step: int, num_steps: int, metrics: dict, meter: progress.Progress, batch_size: int) -> None:
    """One log line: step, loss per stage, images/s and ETA (`metrics`: host_metrics)."""
    stages = " ".join(f"{v:.3f}" for v in np.asarray(metrics["stage_losses"]))
    logging.info("step %d/%d  loss %.3f  [per stage %s]  %s", step, num_steps, metrics["loss"], stages,
                 meter.describe(batch_size))

def step_scalars(metrics: dict, learning_rate: float, steps_per_second: float | None, batch_size: int,
                 skipped: int) -> dict[str, float]:
    """TensorBoard scalars of a logged step: train/loss, train/loss_stage<t>, train/learning_rate
    (base rate of the update), train/images_per_second, train/grad_norm/stage<t>_{first,last},
    train/skipped_steps (non-finite steps skipped by this process so far)."""
    values = {"train/loss": metrics["loss"], "train/learning_rate": learning_rate, "train/skipped_steps": skipped}
    values.update({f"train/loss_stage{t}": v for t, v in enumerate(np.asarray(metrics["stage_losses"]), 1)})
    values.update({f"train/grad_norm/{name}": v for name, v in metrics["grad_norms"].items()})
    if steps_per_second is not None:
        values["train/images_per_second"] = steps_per_second * batch_size
    return values

def divergence_message(problem: str, mngr) -> str:
    latest = mngr.latest_step()
    kept = (f"the newest checkpoint is step {latest} in {mngr.directory}" if latest is not None
            else f"no checkpoint was saved yet in {mngr.directory}")
    return (f"{problem}; the update was not applied and nothing of it was saved: {kept}. Lower "
            "config.optimizer.learning_rate, check the data, or set config.training.nonfinite = 'skip' "
            "to skip such steps")
