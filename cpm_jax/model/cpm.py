"""Convolutional Pose Machine in Flax Linen (Wei et al. 2016, section 3 and figure 2; docs/paper_notes.md).

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
from jax import lax

from cpm_jax.model import architecture as arch
from cpm_jax.model.pooling import caffe_max_pool

KERNEL_INITS = {
    # The release: weights ~ N(0, 0.01^2), biases 0.
    "paper_normal": nn.initializers.normal(stddev=0.01),
    "he_normal": nn.initializers.he_normal(),
}
assert tuple(KERNEL_INITS) == arch.KERNEL_INIT_NAMES
Convolution = Callable[..., jax.Array]  # `lax.conv_general_dilated`'s signature
Pooling = Callable[[jax.Array, int, int], jax.Array]  # (x, window, stride): `caffe_max_pool`'s signature


def compute_dtype(name: str) -> jnp.dtype:
    """The compute dtype of `model.dtype`: "float32", "bfloat16", "float16", or "auto" (bfloat16 on
    a GPU or TPU, float32 on a CPU: `architecture.auto_dtype(jax.default_backend())`)."""
    if name == arch.AUTO_DTYPE:
        name = arch.auto_dtype(jax.default_backend())
    return jnp.dtype(name)


class LayerStack(nn.Module):
    """Applies an `architecture` layer list: conv (+ReLU), Caffe max-pool, dropout.

    Convolutions followed by a ReLU use `kernel_init`; a stage's output convolution (no ReLU)
    uses `output_init`. Every convolution runs `conv` (`lax.conv_general_dilated`'s signature),
    every max pool `pool`."""
    layers: Sequence[arch.Layer]
    kernel_init: Callable
    output_init: Callable
    dtype: jnp.dtype = jnp.float32
    conv: Convolution = lax.conv_general_dilated
    pool: Pooling = caffe_max_pool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        convs = 0
        for layer in self.layers:
            if isinstance(layer, arch.Conv):
                convs += 1
                x = nn.Conv(layer.features, (layer.kernel, layer.kernel), padding="SAME",
                            kernel_init=self.kernel_init if layer.relu else self.output_init,
                            dtype=self.dtype, param_dtype=jnp.float32,
                            conv_general_dilated=self.conv, name=f"conv{convs}")(x)
                if layer.relu:
                    x = nn.relu(x)
            elif isinstance(layer, arch.MaxPool):
                x = self.pool(x, layer.window, layer.stride)
            else:
                x = nn.Dropout(layer.rate, deterministic=not train)(x)
        return x


class _Stage(nn.Module):
    """What every part of the machine is built from: the `model` config block, the kernel
    initialisers, the compute dtype, the convolution and the pool (`CPM`'s fields, passed down)."""
    config: ml_collections.ConfigDict
    kernel_init: Callable
    output_init: Callable
    dtype: jnp.dtype
    conv: Convolution
    pool: Pooling


class InitialStage(_Stage):
    """Stage 1: image (B, H, W, 3) -> beliefs (B, H/8, W/8, P+1) from local evidence only."""

    @nn.compact
    def __call__(self, image: jax.Array, train: bool) -> jax.Array:
        layers = arch.image_trunk(self.config) + arch.stage1_head(self.config)
        return LayerStack(layers, self.kernel_init, self.output_init, self.dtype, self.conv, self.pool,
                          name="layers")(image, train)


class ImageTrunk(_Stage):
    """Shared image features for stages >= 2: (B, H, W, 3) -> (B, H/8, W/8, trunk_features)."""

    @nn.compact
    def __call__(self, image: jax.Array, train: bool) -> jax.Array:
        return LayerStack(arch.image_trunk(self.config), self.kernel_init, self.output_init, self.dtype,
                          self.conv, self.pool, name="layers")(image, train)


class RefinementStage(_Stage):
    """Stage t >= 2: (trunk features, beliefs of stage t-1, center map) -> beliefs (B, h, w, P+1)."""

    @nn.compact
    def __call__(self, trunk_features: jax.Array, previous_beliefs: jax.Array,
                 center_map: jax.Array, train: bool) -> jax.Array:
        stack = functools.partial(LayerStack, kernel_init=self.kernel_init, output_init=self.output_init,
                                  dtype=self.dtype, conv=self.conv, pool=self.pool)
        features = stack(arch.refinement_features(self.config), name="features")(trunk_features, train)
        x = jnp.concatenate([features, previous_beliefs.astype(features.dtype),
                             center_map.astype(features.dtype)], axis=-1)
        return stack(arch.refinement_head(self.config), name="head")(x, train)


class CPM(nn.Module):
    """The whole machine.

    Inputs: image (B, H, W, 3) normalised as x/256 - 0.5; center map (B, H/8, W/8, 1).
    Output: every stage's belief maps, (B, T, H/8, W/8, P+1) float32 whatever the compute dtype
    (`model.dtype`); the last channel is background. Parameters are float32.

    `conv` computes every convolution: `lax.conv_general_dilated` (what XLA compiles on any
    device) unless the caller passes another function of the same signature and result (the
    process's choice: `platform.make_model`). It changes speed, never the parameters. Likewise
    `pool`, every max pool: `caffe_max_pool`, or `window_max_pool` in exported graphs.
    """
    config: ml_collections.ConfigDict  # the `model` block of an experiment config
    conv: Convolution = lax.conv_general_dilated
    pool: Pooling = caffe_max_pool

    @nn.compact
    def __call__(self, image: jax.Array, center_map: jax.Array, train: bool = False) -> jax.Array:
        m = self.config
        kwargs = dict(config=m, kernel_init=KERNEL_INITS[m.kernel_init], output_init=KERNEL_INITS[m.output_init],
                      dtype=compute_dtype(m.get("dtype", "float32")), conv=self.conv, pool=self.pool)
        image = image.astype(kwargs["dtype"])
        beliefs = [InitialStage(name="stage1", **kwargs)(image, train)]
        if m.num_stages > 1:
            trunk_features = ImageTrunk(name="trunk", **kwargs)(image, train)
            for t in range(2, m.num_stages + 1):
                beliefs.append(RefinementStage(name=f"stage{t}", **kwargs)(
                    trunk_features, beliefs[-1], center_map, train))
        return jnp.stack(beliefs, axis=1).astype(jnp.float32)


def abstract_params(model_config: ml_collections.ConfigDict) -> dict:
    """The parameter tree of `CPM(model_config)` as shapes and dtypes (nothing is computed)."""
    size = model_config.input_size
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    center = jax.ShapeDtypeStruct((1, size // arch.STRIDE, size // arch.STRIDE, 1), jnp.float32)
    return jax.eval_shape(lambda i, c: CPM(model_config).init(jax.random.key(0), i, c), image, center)["params"]


def at_path(tree, path: tuple[str, ...]):
    """The leaf (or subtree) of a parameter tree at `path`, e.g. ("stage1", "layers", "conv1", "kernel")."""
    for key in path:
        tree = tree[key]
    return tree


_SUBMODULES = ("layers", "features", "head")  # the LayerStack names, input side first


def first_and_last_convs(params) -> dict[str, tuple[str, ...]]:
    """{"stage<t>_first": path, "stage<t>_last": path}: the kernels of the first and last
    convolution of every stage, in the order the input meets them, by this module's names, e.g.
    stage1: ("stage1", "layers", "conv1", "kernel") .. ("stage1", "layers", "conv7", "kernel");
    stage 2 owns the shared trunk (`model.stage_parameter_groups`), so it starts at
    ("trunk", "layers", "conv1", "kernel") and ends at ("stage2", "head", "conv5", "kernel")."""
    num_stages = sum(name.startswith("stage") for name in params)
    convs = {}
    for t, group in enumerate(arch.stage_parameter_groups(num_stages), 1):
        kernels = [(collection, sub, conv, "kernel") for collection in group for sub in _SUBMODULES
                   for conv in sorted(params[collection].get(sub, {}), key=lambda n: int(n[len("conv"):]))]
        convs[f"stage{t}_first"], convs[f"stage{t}_last"] = kernels[0], kernels[-1]
    return convs
