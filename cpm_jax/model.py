"""Convolutional Pose Machine in Flax Linen (reference section 1).

Stage 1 sees the image only; a separate image trunk is computed once and shared by every later
stage; stage t >= 2 reads [its own 5x5 features, stage t-1's beliefs, the pooled center map].
Stages are composed by an unrolled Python loop, so each has its own parameters ("stage1",
"trunk", "stage2", ...).

Mixed precision (`model.dtype`, see `compute_dtype`): convolutions, pooling, dropout and the
activations between them run in the compute dtype; parameters are created and kept float32
(`param_dtype`; each convolution casts its kernel for the product), so gradients, optimiser state
and updates are float32; the beliefs leave the model as float32 and the loss is computed in
float32 (losses.py).
"""
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cpm_jax import architecture as arch
from cpm_jax import configs
from cpm_jax import convolution
from cpm_jax.pooling import caffe_max_pool

KERNEL_INITS = {
    # The release: weights ~ N(0, 0.01^2), biases 0.
    "paper_normal": nn.initializers.normal(stddev=0.01),
    "he_normal": nn.initializers.he_normal(),
}


def compute_dtype(name: str) -> jnp.dtype:
    """The compute dtype of `model.dtype`: "float32", "bfloat16", "float16", or "auto" (bfloat16 on
    a GPU or TPU, float32 on a CPU: `configs.auto_dtype(jax.default_backend())`)."""
    if name == configs.AUTO_DTYPE:
        name = configs.auto_dtype(jax.default_backend())
    return jnp.dtype(name)


class LayerStack(nn.Module):
    """Applies an `architecture` layer list: conv (+ReLU), Caffe max-pool, dropout.

    Convolutions followed by a ReLU use `kernel_init`; a stage's output convolution (no ReLU)
    uses `output_init`."""
    layers: Sequence[arch.Layer]
    kernel_init: Callable
    output_init: Callable
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        convs = 0
        for layer in self.layers:
            if isinstance(layer, arch.Conv):
                convs += 1
                x = nn.Conv(layer.features, (layer.kernel, layer.kernel), padding="SAME",
                            kernel_init=self.kernel_init if layer.relu else self.output_init,
                            dtype=self.dtype, param_dtype=jnp.float32,
                            conv_general_dilated=convolution.conv_general_dilated, name=f"conv{convs}")(x)
                if layer.relu:
                    x = nn.relu(x)
            elif isinstance(layer, arch.MaxPool):
                x = caffe_max_pool(x, layer.window, layer.stride)
            else:
                x = nn.Dropout(layer.rate, deterministic=not train)(x)
        return x


class InitialStage(nn.Module):
    """Stage 1: image (B, H, W, 3) -> beliefs (B, H/8, W/8, P+1) from local evidence only."""
    config: ml_collections.ConfigDict
    kernel_init: Callable
    output_init: Callable
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, image: jax.Array, train: bool) -> jax.Array:
        layers = arch.image_trunk(self.config) + arch.stage1_head(self.config)
        return LayerStack(layers, self.kernel_init, self.output_init, self.dtype, name="layers")(image, train)


class ImageTrunk(nn.Module):
    """Shared image features for stages >= 2: (B, H, W, 3) -> (B, H/8, W/8, trunk_features)."""
    config: ml_collections.ConfigDict
    kernel_init: Callable
    output_init: Callable
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, image: jax.Array, train: bool) -> jax.Array:
        return LayerStack(arch.image_trunk(self.config), self.kernel_init, self.output_init, self.dtype,
                          name="layers")(image, train)


class RefinementStage(nn.Module):
    """Stage t >= 2: (trunk features, beliefs of stage t-1, center map) -> beliefs (B, h, w, P+1)."""
    config: ml_collections.ConfigDict
    kernel_init: Callable
    output_init: Callable
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, trunk_features: jax.Array, previous_beliefs: jax.Array,
                 center_map: jax.Array, train: bool) -> jax.Array:
        stack = functools.partial(LayerStack, kernel_init=self.kernel_init, output_init=self.output_init,
                                  dtype=self.dtype)
        features = stack(arch.refinement_features(self.config), name="features")(trunk_features, train)
        x = jnp.concatenate([features, previous_beliefs.astype(features.dtype),
                             center_map.astype(features.dtype)], axis=-1)
        return stack(arch.refinement_head(self.config), name="head")(x, train)


class CPM(nn.Module):
    """The whole machine.

    Inputs: image (B, H, W, 3) normalised as x/256 - 0.5; center map (B, H/8, W/8, 1).
    Output: every stage's belief maps, (B, T, H/8, W/8, P+1) float32 whatever the compute dtype
    (`model.dtype`); the last channel is background. Parameters are float32.
    """
    config: ml_collections.ConfigDict  # the `model` block of an experiment config

    @nn.compact
    def __call__(self, image: jax.Array, center_map: jax.Array, train: bool = False) -> jax.Array:
        m = self.config
        kwargs = dict(config=m, kernel_init=KERNEL_INITS[m.kernel_init],
                      output_init=KERNEL_INITS[m.output_init], dtype=compute_dtype(m.get("dtype", "float32")))
        image = image.astype(kwargs["dtype"])
        beliefs = [InitialStage(name="stage1", **kwargs)(image, train)]
        if m.num_stages > 1:
            trunk_features = ImageTrunk(name="trunk", **kwargs)(image, train)
            for t in range(2, m.num_stages + 1):
                beliefs.append(RefinementStage(name=f"stage{t}", **kwargs)(
                    trunk_features, beliefs[-1], center_map, train))
        return jnp.stack(beliefs, axis=1).astype(jnp.float32)


def stage_parameter_groups(num_stages: int) -> list[tuple[str, ...]]:
    """Top-level parameter collections owned by each stage; the shared trunk is counted with stage 2."""
    groups = [("stage1",)]
    if num_stages > 1:
        groups.append(("trunk", "stage2"))
    groups += [(f"stage{t}",) for t in range(3, num_stages + 1)]
    return groups


def at_path(tree, path: tuple[str, ...]):
    """The leaf (or subtree) of a parameter tree at `path`, e.g. ("stage1", "layers", "conv1", "kernel")."""
    for key in path:
        tree = tree[key]
    return tree
