"""Optimisers by name: `config.optimizer.name` picks one from OPTIMIZERS; `schedule` gives the
base learning rate of its update k (training logs it to TensorBoard)."""
from typing import Callable

import jax
import ml_collections
import optax


def _is_kernel(path) -> bool:
    return getattr(path[-1], "key", None) == "kernel"


def caffe_sgd(cfg: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
    """The release's solver: SGD + momentum, step decay, weight decay on weights only, and
    per-layer learning-rate multipliers (stage 1 weights/biases x5/x10, all others x1/x2)."""
    def multiplier(path, _):
        weights, biases = cfg.stage1_multipliers if path[0].key == "stage1" else cfg.other_multipliers
        return weights if _is_kernel(path) else biases

    multipliers = jax.tree_util.tree_map_with_path(multiplier, params)
    kernel_mask = jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=kernel_mask),
        optax.stateless(lambda updates, _: jax.tree.map(lambda u, m: u * m, updates, multipliers)),
        optax.sgd(step_decay(cfg), momentum=cfg.momentum),
    )


def step_decay(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """caffe_sgd's base rate: x decay_factor every decay_every updates (staircase)."""
    return optax.exponential_decay(cfg.learning_rate, transition_steps=cfg.decay_every,
                                   decay_rate=cfg.decay_factor, staircase=True)


def adam(cfg: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
    """Adam with a linear warm-up and cosine decay over `decay_steps` (for short demo runs)."""
    del params
    return optax.adam(warmup_cosine(cfg))


def warmup_cosine(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """adam's rate: linear from 0 over warmup_steps, cosine down to 1% at decay_steps."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup_steps=cfg.warmup_steps, decay_steps=cfg.decay_steps,
        end_value=cfg.learning_rate * 0.01)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "caffe_sgd": caffe_sgd,
    "adam": adam,
}
SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict], optax.Schedule]] = {
    "caffe_sgd": step_decay,
    "adam": warmup_cosine,
}


def make(cfg: ml_collections.ConfigDict, params, frozen=()) -> optax.GradientTransformation:
    """The optimiser `cfg.name` names, for `params` ({collection: tree}). The top-level
    collections named in `frozen` (config.training.frozen) get zero updates and no optimiser
    state (`optax.multi_transform` with `optax.set_to_zero`); with none frozen, the plain
    optimiser (its state tree is the one checkpoints hold)."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name = {cfg.name!r}: unknown; known: {', '.join(OPTIMIZERS)}")
    if not frozen:
        return OPTIMIZERS[cfg.name](cfg, params)
    labels = {name: jax.tree.map(lambda _: "frozen" if name in frozen else "trained", tree)
              for name, tree in params.items()}
    # The trained part sees the frozen leaves as optax.MaskedNode, as multi_transform hands them over.
    trained = {name: jax.tree.map(lambda _: optax.MaskedNode(), tree) if name in frozen else tree
               for name, tree in params.items()}
    return optax.multi_transform({"trained": OPTIMIZERS[cfg.name](cfg, trained), "frozen": optax.set_to_zero()},
                                 labels)


def schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """The base learning rate (per-layer multipliers not applied) of update k = 0, 1, ... of the
    optimiser `cfg` names."""
    make_schedule = SCHEDULES.get(cfg.name)
    if make_schedule is None:
        raise ValueError(f"config.optimizer.name = {cfg.name!r}: unknown; known: {', '.join(SCHEDULES)}")
    return make_schedule(cfg)
