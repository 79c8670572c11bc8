"""The CPM objective (the paper, section 3.3; docs/paper_notes.md section 2): per-stage sum of
squared errors, summed over stages."""
import jax
import jax.numpy as jnp


def stage_targets(targets: jax.Array, stage1_targets: jax.Array, num_stages: int) -> jax.Array:
    """(B, T, h, w, P+1): `stage1_targets` (every person's peaks) for stage 1, the primary
    person's `targets` (B, h, w, P+1) for every later stage (docs/paper_notes.md section 3, MPII)."""
    later = jnp.broadcast_to(targets[:, None], (targets.shape[0], num_stages - 1) + targets.shape[1:])
    return jnp.concatenate([stage1_targets[:, None], later], axis=1)


def cpm_loss(beliefs: jax.Array, targets: jax.Array,
             intermediate_supervision: bool = True) -> tuple[jax.Array, jax.Array]:
    """Loss of every stage and their total.

    Args:
      beliefs: (B, T, h, w, P+1) every stage's belief maps.
      targets: (B, h, w, P+1), the same for every stage, or (B, T, h, w, P+1) per stage
        (e.g. stage 1 with every person's peaks, later stages with the primary person's only).
      intermediate_supervision: if False only the final stage's loss counts (paper ablation iv).
    Returns:
      (total, per_stage): f_t = sum over maps and cells of (b_t - b*_t)^2 / (2 B), as the release's
      Euclidean layer; total = sum of the supervised f_t. per_stage is (T,) and always holds every
      stage's f_t, supervised or not. Computed and summed in float32 whatever the beliefs' dtype
      (a bfloat16 sum over ~10^5 cells would lose the small late-training differences).
    """
    beliefs, targets = beliefs.astype(jnp.float32), targets.astype(jnp.float32)
    if targets.ndim == beliefs.ndim - 1:
        targets = targets[:, None]
    batch, num_stages = beliefs.shape[:2]
    per_stage = jnp.sum(jnp.square(beliefs - targets), axis=(0, 2, 3, 4)) / (2.0 * batch)
    if intermediate_supervision:
        return jnp.sum(per_stage), per_stage
    return per_stage[num_stages - 1], per_stage
