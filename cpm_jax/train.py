"""Training loop: data-parallel `jax.pmap` steps, Orbax checkpoints, held-out evaluation.

    python -m cpm_jax.train --config experiments/synthetic.py --workdir runs/demo [--config.x=y]

Every `training.eval_every` steps (0: only at the end) and at the end, the training evaluator
(`evaluators.CropEvaluator`) scores every stage on the evaluation split; the end's result goes to
`<workdir>/metrics.json` with pictures (skeletons.png, beliefs_by_stage.png), every result to
`<workdir>/heldout.jsonl` with `learning_curve.png` (held-out score of every stage by step), and
the state with the best final-stage score so far to `<workdir>/best`. TensorBoard events (losses, learning rate,
images/s, gradient norms of every stage's first and last convolution, held-out scores) go to
`<workdir>/tensorboard` (summaries.py).

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
import functools
import json
import os
import signal
import threading
import typing

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from flax.training import train_state
from ml_collections import config_flags

from cpm_jax import checkpointing, cli, configs, distributed, errors, gradients, losses, progress, runtime
from cpm_jax import state as train_states
from cpm_jax import model as cpm_model, optimizers
from data_pipelines import registry

if typing.TYPE_CHECKING:  # imported when the evaluation is made (`HeldOut`)
    from cpm_jax import evaluators

AXIS = "batch"  # the devices' axis of the data-parallel step (`lax.pmean` over it)


def train_step(state: train_state.TrainState, batch: dict, rng: jax.Array,
               intermediate_supervision: bool, record_gradients: bool = False):
    """One step on this device's share of the batch; gradients and metrics averaged over 'batch'.

    The update is applied only if the loss and every gradient are finite (all devices decide
    alike: they test the averaged values); otherwise parameters and optimiser state stay as they
    were and only the step counter advances. Metrics: loss, stage_losses (T,), finite (bool),
    grads_finite (T,) per stage (`model.stage_parameter_groups`), grad_norms {"stage<t>_first",
    "stage<t>_last": L2 norm of the kernel gradient of stage t's first and last convolution};
    with `record_gradients` also grad_histograms (L, B) int32: `gradients.histograms` of those
    kernels' averaged gradients, in `first_and_last_convs` order (without it the step is
    compiled exactly as before)."""
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))

    def loss_fn(params):
        beliefs = state.apply_fn({"params": params}, batch["image"], batch["center_map"],
                                 train=True, rngs={"dropout": rng})
        targets = batch["targets"]
        if "stage1_targets" in batch:
            targets = losses.stage_targets(targets, batch["stage1_targets"], beliefs.shape[1])
        return losses.cpm_loss(beliefs, targets, intermediate_supervision)

    (loss, stage_losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    metrics = jax.lax.pmean({"loss": loss, "stage_losses": stage_losses}, AXIS)
    groups = cpm_model.stage_parameter_groups(stage_losses.shape[0])
    grads_finite = jnp.stack([_all_finite([grads[name] for name in group]) for group in groups])
    finite = jnp.isfinite(metrics["loss"]) & jnp.all(jnp.isfinite(metrics["stage_losses"])) & jnp.all(grads_finite)
    updated = state.apply_gradients(grads=grads)
    kept = updated.replace(params=state.params, opt_state=state.opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
    convs = first_and_last_convs(grads)
    metrics.update(finite=finite, grads_finite=grads_finite, grad_norms={
        name: jnp.sqrt(jnp.sum(jnp.square(cpm_model.at_path(grads, path)))) for name, path in convs.items()})
    if record_gradients:
        metrics["grad_histograms"] = jnp.stack(list(gradients.histograms(grads, convs).values()))
    return new_state, metrics


def parallel_train_step(config: ml_collections.ConfigDict):
    """`train_step` over this process's devices (`jax.pmap`, axis AXIS, the state donated):
    (replicated state, batch (devices, B/devices, ...), replicated key) -> (state, metrics);
    recording gradient histograms when `training.gradient_histogram_every > 0`."""
    return jax.pmap(functools.partial(train_step, intermediate_supervision=config.loss.intermediate_supervision,
                                      record_gradients=config.training.get("gradient_histogram_every", 0) > 0),
                    axis_name=AXIS, donate_argnums=(0,))


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def replicate(tree):
    """`tree` stacked over this process's devices, (devices, ...), and placed as the step's own
    outputs are (a mesh axis named AXIS), so that the step's second call finds the compilation of
    the first: flax's default axis name differs from the step's and cost a second compilation
    (8.8 s for the demo model on 2 cores)."""
    return flax.jax_utils.replicate(tree, axis_name=AXIS)


_SUBMODULES = ("layers", "features", "head")  # model.py's LayerStack names, input side first


def first_and_last_convs(params) -> dict[str, tuple[str, ...]]:
    """{"stage<t>_first": path, "stage<t>_last": path}: the kernels of the first and last
    convolution of every stage, in the order the input meets them, by `model.py`'s names, e.g.
    stage1: ("stage1", "layers", "conv1", "kernel") .. ("stage1", "layers", "conv7", "kernel");
    stage 2 owns the shared trunk (`model.stage_parameter_groups`), so it starts at
    ("trunk", "layers", "conv1", "kernel") and ends at ("stage2", "head", "conv5", "kernel")."""
    num_stages = sum(name.startswith("stage") for name in params)
    convs = {}
    for t, group in enumerate(cpm_model.stage_parameter_groups(num_stages), 1):
        kernels = [(collection, sub, conv, "kernel") for collection in group for sub in _SUBMODULES
                   for conv in sorted(params[collection].get(sub, {}), key=lambda n: int(n[len("conv"):]))]
        convs[f"stage{t}_first"], convs[f"stage{t}_last"] = kernels[0], kernels[-1]
    return convs


class Preempted(Exception):
    """The run stopped early on request (SIGTERM, a preemption) after saving a checkpoint at
    `step` in `directory`; the same command continues it."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted at step {step}: checkpoint saved in {directory}/{step}; run the same "
                         "command to continue")
        self.step, self.directory = step, directory


class Preemption:
    """Whether the run has been asked to stop: after the step it has just finished, every process
    saves a checkpoint at that step and exits.

    One process: SIGTERM (what Kubernetes and SLURM send before killing) sets a flag; the handler
    is installed while the `with` block runs (from the main thread only) and the previous one
    restored after it; later SIGTERMs are only logged (SIGKILL still ends the process at once).
    Several processes (jax.distributed): JAX's preemption service, which watches SIGTERM itself,
    tells every process the same step to stop at: `CheckpointManager.reached_preemption(step)`
    (`multihost_utils.reached_preemption_sync_point`), called at every step on every process.
    Orbax's check alone never fires in a single process (it needs jax.distributed's client), so
    a single process uses the handler."""

    def __init__(self, mngr, start_step: int):
        self._mngr = mngr
        self._multiprocess = jax.process_count() > 1
        self._signalled_in_step = None      # the step that was running when SIGTERM arrived
        self._step = start_step             # the last step finished
        self._previous = None

    def __enter__(self) -> "Preemption":
        if not self._multiprocess:
            if threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            else:
                logging.warning("training outside the main thread: SIGTERM will not save a checkpoint first")
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        if self._signalled_in_step is None:
            self._signalled_in_step = self._step + 1
            logging.warning("SIGTERM received during step %d: finishing it, then saving a checkpoint and exiting",
                            self._step + 1)
        else:
            logging.warning("SIGTERM received again: already stopping after step %d", self._signalled_in_step)

    def reached(self, step: int) -> bool:
        """Whether to save at `step` (just finished) and stop; call it once per step."""
        self._step = step
        if self._multiprocess:
            return self._mngr.reached_preemption(step)
        return self._signalled_in_step is not None


class HeldOut:
    """The run's held-out evaluation (evaluators.CropEvaluator): scores every stage, logs the
    scores, writes them to TensorBoard (`eval/<metric>/stage<t>`), appends them to
    `<workdir>/heldout.jsonl` and redraws `<workdir>/learning_curve.png` (process 0), and keeps
    the state with the best final-stage score in `<workdir>/best` (checkpointing.best_manager)."""

    def __init__(self, config: ml_collections.ConfigDict, best, writer, workdir: str):
        from cpm_jax import evaluators
        self.evaluator = evaluators.CropEvaluator(config)
        self.best, self.writer = best, writer
        self.history = os.path.join(workdir, HISTORY) if jax.process_index() == 0 else None

    def __call__(self, step: int, state: train_state.TrainState) -> "evaluators.Result":
        result = self.evaluator.run({"params": state.params})
        log_evaluation(step, result)
        self.writer.scalars(step, {f"eval/{result.label}/stage{t}": v
                                   for t, v in zip(result.stages, result.totals) if v is not None})
        if self.history:
            self._record(step, result)
        final = result.totals[-1]
        if final is not None and checkpointing.save_if_best(self.best, step, state, final):
            logging.info("step %d: best held-out %s of the final stage so far (%.3f): saved in %s/%d",
                         step, result.label, final, self.best.directory, step)
        return result

    def _record(self, step: int, result: "evaluators.Result") -> None:
        from cpm_jax import visualize
        with open(self.history, "a") as f:
            f.write(json.dumps({"step": step, "metric": result.label, "per_stage": result.totals,
                                "parts_per_stage": [r["parts"] for r in result.per_stage]}) + "\n")
        with open(self.history) as f:
            rows = {row["step"]: row for row in map(json.loads, f)}   # a resumed run: the newest per step
        visualize.learning_curve([rows[k] for k in sorted(rows)],
                                 os.path.join(os.path.dirname(self.history), "learning_curve.png"))


HISTORY = "heldout.jsonl"      # one line per held-out evaluation: step, metric, per-stage scores


def host_metrics(metrics) -> dict:
    """Device 0's copy of the pmapped step's metrics, as numpy (they are equal on every device)."""
    return jax.device_get(jax.tree.map(lambda x: x[0], metrics))


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


def applied_updates(opt_state) -> int:
    """How many updates the optimiser has applied: the `count` of its schedule state (equal to
    the step unless steps were skipped as non-finite)."""
    counts = [x for path, x in jax.tree_util.tree_leaves_with_path(opt_state)
              if getattr(path[-1], "name", None) == "count"]
    return int(np.asarray(jax.device_get(counts[0])).reshape(-1)[0])


def describe_nonfinite(step: int, metrics: dict) -> str:
    """'step 7: the loss of stage 2 is not finite (loss per stage: 1.2 nan)', or the gradient's."""
    stage_losses = np.asarray(metrics["stage_losses"])
    per_stage = " ".join(f"{v:.4g}" for v in stage_losses)
    bad_loss = [t for t, v in enumerate(stage_losses, 1) if not np.isfinite(v)]
    bad_grad = [t for t, ok in enumerate(np.asarray(metrics["grads_finite"]), 1) if not ok]
    if bad_loss:
        what = f"the loss of {_stages(bad_loss)} is not finite"
    elif bad_grad:
        what = f"the gradient of {_stages(bad_grad)} is not finite (every stage's loss is finite)"
    else:
        what = f"the total loss ({metrics['loss']}) is not finite"
    return f"step {step}: {what} (loss per stage: {per_stage})"


def _stages(numbers: list[int]) -> str:
    return ("stage " if len(numbers) == 1 else "stages ") + ", ".join(map(str, numbers))


def log_evaluation(step: int, result: "evaluators.Result") -> None:
    for t, s in zip(result.stages, result.per_stage):
        parts = " ".join(f"{k} {v:.2f}" for k, v in s["parts"].items() if v is not None)
        logging.info("step %d: held-out %s stage %d: %.3f  (%s)", step, result.label, t, s["total"], parts)


def make_report(step: int, result: "evaluators.Result", pictures: list[str]) -> dict:
    """What `<workdir>/metrics.json` holds: the evaluator's result at `step` (fractions) and the pictures."""
    return {
        "step": step, "dataset": result.dataset, "split": result.split,
        "num_examples": len(result.predictions), "metric": result.label,
        f"{result.label.lower()}_per_stage": result.totals,
        "parts_per_stage": [r["parts"] for r in result.per_stage],
        "final_stage": result.per_stage[-1], "pictures": pictures,
    }


def check_batch_sizes(t: ml_collections.ConfigDict) -> None:
    for key, devices in (("global_batch_size", jax.device_count()), ("eval_batch_size", jax.local_device_count())):
        if t[key] % devices:
            raise errors.ConfigError(f"config.training.{key} = {t[key]}: must be divisible by the "
                                     f"{devices} devices")


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


def divergence_message(problem: str, mngr) -> str:
    latest = mngr.latest_step()
    kept = (f"the newest checkpoint is step {latest} in {mngr.directory}" if latest is not None
            else f"no checkpoint was saved yet in {mngr.directory}")
    return (f"{problem}; the update was not applied and nothing of it was saved: {kept}. Lower "
            "config.optimizer.learning_rate, check the data, or set config.training.nonfinite = 'skip' "
            "to skip such steps")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to `config.training.num_steps` (resuming from the workdir's newest readable
    checkpoint) and returns the held-out evaluation written to `<workdir>/metrics.json`.

    Raises Preempted after saving a checkpoint when asked to stop (SIGTERM); errors.DivergenceError
    on a non-finite step with training.nonfinite = "stop"; errors.ConfigError for a config that
    would change the run the workdir holds and errors.CheckpointError for a workdir held by
    another run or without a readable checkpoint (those two change nothing in the workdir)."""
    from cpm_jax import summaries
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


FLAGS = flags.FLAGS


def main(argv) -> None:
    runtime.setup()
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    configs.validate(FLAGS.config, registry.DATASETS)  # before JAX starts: a bad value fails at once
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)  # logs backend, devices
    # Here: schemes imports this module, as cpm_jax.train (under `python -m` this one is __main__,
    # so its Preempted is another class than the one that module raises).
    from cpm_jax import schemes
    try:
        result = schemes.run(FLAGS.config, FLAGS.workdir)
    except schemes.train.Preempted as stop:  # asked to stop, checkpoint saved: a success (exit 0)
        if jax.process_index() == 0:
            print(stop)
        return
    if jax.process_index() != 0:    # one report per job
        return
    metric = result["metric"]
    stages = "  ".join(f"stage {i}: {v:.3f}" for i, v in enumerate(result[f"{metric.lower()}_per_stage"], 1))
    print(f"held-out {metric} per stage  {stages}")
    print(f"wrote {FLAGS.workdir}/metrics.json and {', '.join(result['pictures'])}")


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.json and pictures.")
    flags.mark_flags_as_required(["config", "workdir"])
    # Multi-host: JAX auto-detects TPU pods, SLURM (srun) and Open MPI; these flags join a job by hand.
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, the same on every process.")
    flags.DEFINE_integer("num_processes", None, "Processes in the job (one per host, or per GPU).", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "This process's rank, 0 .. num_processes - 1.", lower_bound=0)
    cli.run(main)
