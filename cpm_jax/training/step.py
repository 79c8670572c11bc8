"""The data-parallel training step: `train_step` on each device's share of a batch, gradients and
metrics averaged over the devices (`jax.lax.pmean` over AXIS), run by `jax.pmap`.

A step's update is applied only if the loss and every gradient are finite; otherwise the state
keeps its parameters and optimiser state (the step counter still advances). The helpers turn
the step's metrics into host values and the words a log or an error uses.
"""
import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.training import train_state

from cpm_jax.model import architecture, losses
from cpm_jax.model import cpm as cpm_model
from cpm_jax.training import gradients

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
    groups = architecture.stage_parameter_groups(stage_losses.shape[0])
    grads_finite = jnp.stack([_all_finite([grads[name] for name in group]) for group in groups])
    finite = jnp.isfinite(metrics["loss"]) & jnp.all(jnp.isfinite(metrics["stage_losses"])) & jnp.all(grads_finite)
    updated = state.apply_gradients(grads=grads)
    kept = updated.replace(params=state.params, opt_state=state.opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
    convs = cpm_model.first_and_last_convs(grads)
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


def host_metrics(metrics) -> dict:
    """Device 0's copy of the pmapped step's metrics, as numpy (they are equal on every device)."""
    return jax.device_get(jax.tree.map(lambda x: x[0], metrics))


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
