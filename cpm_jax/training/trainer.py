"""The training job, `train_and_evaluate`, read top to bottom: validate the config; open the workdir
(lock, checkpoint managers), restore or create the state (`restore_or_create`), read the
held-out examples once, then write config.json; then `train`: build the data, and loop (step,
log, checkpoint, evaluate) with `jax.pmap` steps (step.py); finally evaluate and report (heldout.py:
metrics.json, pictures, heldout.jsonl, the best state in `<workdir>/best`). TensorBoard events
go to `<workdir>/tensorboard` (summaries.py).

A run can be stopped at any moment and continued by the same command:
  * killed (SIGKILL, a lost machine): the restart resumes from the newest readable checkpoint
    (checkpointing.py) and ends with parameters bit-identical to an uninterrupted run (same
    devices): step k depends only on the checkpointed state (parameters, optimiser state, step),
    the dropout key (seed, step, device) and the examples at stream positions (k - 1) x batch ..
    k x batch - 1, which the pipeline derives from (seed, position) alone;
  * preempted (SIGTERM, as Kubernetes and SLURM send) or interrupted (Ctrl-C): the current step
    finishes, a checkpoint is saved at it and the process exits 0 (130 after Ctrl-C); an
    evaluation is abandoned, its step saved (`Preemption`);
  * diverged: a step with a non-finite loss or gradient is never applied (`train_step`); the run
    stops with errors.DivergenceError naming the step and stage(s), or, with
    `training.nonfinite = "skip"`, goes on without it.
A running `train` holds the workdir's lock (a second one is refused naming the holder), and a
config that would change the run a workdir holds is refused before anything is written
(checkpointing.check_same_run).
"""
import contextlib
import json
import os

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from flax.training import train_state

from cpm_jax import configs, errors, progress
from cpm_jax.training import checkpointing, gradients, optimizers, save_failures
from cpm_jax.training import state as train_states
from cpm_jax.training.heldout import HeldOut, check_heldout_examples, make_report
from cpm_jax.training.preemption import Abandoned, Preempted, Preemption
from cpm_jax.training.step import applied_updates, describe_nonfinite, host_metrics, parallel_train_step, replicate
from data_pipelines import registry


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.training.num_steps` (resuming from the workdir's newest readable
    checkpoint) and returns the held-out evaluation written to `<workdir>/metrics.json`.

    Raises Preempted after saving a checkpoint when asked to stop (SIGTERM, Ctrl-C), also during
    an evaluation (abandoned; the same command evaluates that step again); errors.DivergenceError
    on a non-finite step with training.nonfinite = "stop"; errors.ConfigError for a config that
    would change the run the workdir holds, errors.CheckpointError for a workdir held by another
    run or without a checkpoint this config can read, and errors.DataError for a held-out example
    that cannot be read (those three change nothing in the workdir: config.json is written once
    the checkpoint has been restored and the held-out examples read); errors.CheckpointError for
    a save that failed (a full disk) or was not kept."""
    from cpm_jax.training import summaries
    configs.validate(config, registry.DATASETS)
    configs.resolve_dtype(config, jax.default_backend())   # config.json records the dtype it ran in
    check_batch_sizes(config.training)
    checkpointing.check_same_run(workdir, config)
    primary = jax.process_index() == 0
    with checkpointing.locked(workdir, jax.process_index()), \
            checkpointing.closing(checkpointing.manager(workdir, config.training.keep_checkpoints)) as mngr:
        state, start_step = restore_or_create(config, workdir, mngr)
        check_heldout_examples(config)     # a bad held-out file fails now, not after the training
        if primary:
            checkpointing.write_config(workdir, config)
        try:
            with checkpointing.closing(checkpointing.best_manager(workdir)) as best, \
                    contextlib.closing(summaries.open(os.path.join(workdir, "tensorboard"))) as writer, \
                    Preemption(mngr, start_step, config.training.num_steps) as preemption:
                held_out = HeldOut(config, best, writer, workdir)
                state = train(config, state, start_step, mngr, writer, held_out, preemption)
                return finish(config, workdir, state, mngr, held_out, preemption)
        except Exception as error:  # a full disk, whichever write found it first: one line
            if isinstance(error, errors.UserError) or not save_failures.no_space(error):
                raise
            raise checkpointing.full_disk(mngr, error) from error


def finish(config: ml_collections.ConfigDict, workdir: str, state: train_state.TrainState, mngr,
           held_out: HeldOut, preemption: Preemption) -> dict:
    """The final evaluation, pictures and metrics.json of the trained `state`, whose checkpoint
    is saved first: a stop signal abandons the evaluation (Preempted), and the same command
    restores that checkpoint and evaluates it again."""
    step = int(state.step)
    checkpointing.ensure_saved(mngr, step)
    try:
        result = held_out(step, state, preemption.abandonable)
        pictures = []
        if jax.process_index() == 0:
            with preemption.abandonable():
                pictures = held_out.evaluator.write_pictures({"params": state.params}, workdir,
                                                             config.training.num_visualized)
                pictures += gradients.pictures(config, workdir)  # gradients.png, drawn by `train`
    except Abandoned as stop:
        raise stopped(step, mngr, stop.signal_name, "the final evaluation (abandoned)",
                      "evaluate it and write metrics.json") from None
    report = make_report(step, result, pictures)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(report, f, indent=2)
    return report


def stopped(step: int, mngr, signal_name: str | None, during: str = "", then: str = "continue") -> Preempted:
    """The Preempted of a run stopped at `step`, whose checkpoint is saved: logged here, printed
    by the command."""
    stop = Preempted(step, str(mngr.directory), signal_name or "SIGTERM", during, then)
    logging.warning("%s", stop)
    return stop


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
          writer, held_out: HeldOut, preemption: Preemption) -> train_state.TrainState:
    """Steps start_step + 1 .. num_steps: log, checkpoint, evaluate, stop on preemption
    (Preempted) or divergence (errors.DivergenceError). Returns the final state (device 0).
    A stop signal during a held-out evaluation abandons it (its step saved first), and the
    same command evaluates that step before the next one (`heldout.HeldOut.recorded`).

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

    def evaluate_or_stop(step: int, state: train_state.TrainState, saved: bool) -> None:
        try:
            held_out(step, state, preemption.abandonable)
        except Abandoned as stop:
            if not saved and checkpointing.save(mngr, step, state):
                logging.info("saving checkpoint %d in %s", step, mngr.directory)
            if recorder:
                recorder.finish(step)
            checkpointing.ensure_saved(mngr, step)
            raise stopped(step, mngr, stop.signal_name, "its held-out evaluation (abandoned)",
                          f"continue (it evaluates step {step} first)") from None

    if evaluates(t, start_step) and not held_out.recorded(start_step):  # stopped during it
        evaluate_or_stop(start_step, state, saved=True)
    batches = pipeline.train_batches(config, jax.local_device_count(), start_step,
                                     (jax.process_index(), jax.process_count()))
    unchecked = None  # (step, metrics) whose finite flag has not been read yet
    try:
        for step in range(start_step + 1, t.num_steps + 1):
            p_state, metrics = p_step(p_state, next(batches), p_rng)
            meter.update(step)
            if recorder:
                recorder.add(step, metrics["grad_histograms"])  # stays on the device till a period ends
            if unchecked:
                check_finite(*unchecked)  # the previous step: it has ended, this one is queued
            unchecked = (step, metrics)
            stop = preemption.reached(step)
            evaluate = evaluates(t, step)
            if (step % t.log_every == 0 or step % t.checkpoint_every == 0 or step == t.num_steps
                    or stop or evaluate):
                check_finite(*unchecked)  # before anything is logged, saved or evaluated
                unchecked = None
            if step % t.log_every == 0 or step == t.num_steps:
                m = host_metrics(metrics)
                log_step(step, t.num_steps, m, meter, t.global_batch_size)
                rate = float(schedule(max(applied_updates(p_state.opt_state) - 1, 0)))
                writer.scalars(step, step_scalars(m, rate, meter.rate(), t.global_batch_size, skipped))
            saved = False
            if step % t.checkpoint_every == 0 or step == t.num_steps or stop:
                saved = checkpointing.save(mngr, step, flax.jax_utils.unreplicate(p_state))
                if saved:   # Orbax may decline a save: only one it makes is logged
                    logging.info("saving checkpoint %d in %s", step, mngr.directory)
            if stop:
                if recorder:
                    recorder.finish(step)
                checkpointing.ensure_saved(mngr, step)
                preempted = Preempted(step, str(mngr.directory), preemption.signal_name or "SIGTERM")
                logging.warning("%s: stopped after step %d with checkpoint %s/%d; the same command "
                                "continues the run", preempted.what, step, mngr.directory, step)
                raise preempted
            if evaluate:
                evaluate_or_stop(step, flax.jax_utils.unreplicate(p_state), saved)
    finally:
        batches.close()
    if recorder:
        logging.info("gradient histograms: %s", ", ".join(recorder.finish(t.num_steps)))
    if skipped:
        logging.warning("%d step(s) of this run were skipped as non-finite (training.nonfinite = 'skip')", skipped)
    return flax.jax_utils.unreplicate(p_state)


def evaluates(t: ml_collections.ConfigDict, step: int) -> bool:
    """Whether step `step` ends with a held-out evaluation (besides the final one)."""
    return bool(step and t.eval_every and step % t.eval_every == 0 and step != t.num_steps)


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
