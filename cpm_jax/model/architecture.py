"""The CPM layer lists: one source for the Flax modules, the receptive fields and the compute count.

The paper, section 3.2 and figure 2; docs/paper_notes.md section 1. Every convolution has stride 1
and "same" padding; max-pools are 3x3, stride 2, Caffe ceil mode. Widths and kernel sizes come from
the model config so that tests and demos can use tiny networks; the defaults in `experiments/` are
the paper's.
"""
import collections
import dataclasses
import math
from typing import Sequence, Union

import ml_collections


@dataclasses.dataclass(frozen=True)
class Conv:
    kernel: int
    features: int
    relu: bool = True


@dataclasses.dataclass(frozen=True)
class MaxPool:
    window: int = 3
    stride: int = 2


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float


Layer = Union[Conv, MaxPool, Dropout]
NUM_POOLS = 3
STRIDE = 2 ** NUM_POOLS  # input pixels per belief-map cell
KERNEL_INIT_NAMES = ("paper_normal", "he_normal")  # model.kernel_init / output_init (cpm.KERNEL_INITS)
AUTO_DTYPE = "auto"      # model.dtype resolved by the backend (auto_dtype)
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")  # jax.default_backend() names where "auto" is bfloat16


def auto_dtype(backend: str) -> str:
    """What `model.dtype = "auto"` means on `backend` (`jax.default_backend()`): "bfloat16" on a
    GPU or TPU, "float32" elsewhere (a CPU: bfloat16 convolutions are slow there)."""
    return "bfloat16" if str(backend).lower() in ACCELERATORS else "float32"


def stage_parameter_groups(num_stages: int) -> list[tuple[str, ...]]:
    """Top-level parameter collections owned by each stage; the shared trunk is counted with stage 2."""
    groups = [("stage1",)]
    if num_stages > 1:
        groups.append(("trunk", "stage2"))
    groups += [(f"stage{t}",) for t in range(3, num_stages + 1)]
    return groups


# The network's input: RGB values v in 0..255 fed as v / 256 - 0.5 (docs/paper_notes.md section 1).
PIXEL_SCALE, PIXEL_OFFSET = 256.0, 0.5


def normalise_image(image):
    """uint8-valued (..., H, W, 3) pixels (as float) -> network input; numpy, jnp or tf arrays."""
    return image / PIXEL_SCALE - PIXEL_OFFSET


def denormalise_image(image):
    """`normalise_image`'s inverse (float values 0..255; round and clip for display)."""
    return (image + PIXEL_OFFSET) * PIXEL_SCALE


def image_trunk(m: ml_collections.ConfigDict) -> tuple[Layer, ...]:
    """3 x [conv (trunk_kernel, trunk_features) + pool]: input (H, W, 3) -> (H/8, W/8, trunk_features)."""
    return (Conv(m.trunk_kernel, m.trunk_features), MaxPool()) * NUM_POOLS


def stage1_head(m: ml_collections.ConfigDict) -> tuple[Layer, ...]:
    """Stage 1 after its own image trunk: 5x5, 9x9 (+dropout), 1x1 (+dropout), 1x1 to P+1 maps."""
    return (
        Conv(5, m.bottleneck_features),
        Conv(m.stage1_kernel, m.stage1_features), Dropout(m.dropout_rate),
        Conv(1, m.stage1_features), Dropout(m.dropout_rate),
        Conv(1, m.num_parts + 1, relu=False),
    )


def refinement_features(m: ml_collections.ConfigDict) -> tuple[Layer, ...]:
    """A later stage's own 5x5 conv on the shared trunk output."""
    return (Conv(5, m.bottleneck_features),)


def refinement_head(m: ml_collections.ConfigDict) -> tuple[Layer, ...]:
    """A later stage after the concat: 3 x conv (stage_kernel), 1x1, 1x1 to P+1 maps."""
    return (Conv(m.stage_kernel, m.stage_features),) * 3 + (
        Conv(1, m.stage_features), Conv(1, m.num_parts + 1, relu=False))


def concat_channels(m: ml_collections.ConfigDict) -> int:
    """Channels entering a later stage's head: its features, previous beliefs, center map."""
    return m.bottleneck_features + (m.num_parts + 1) + 1


def pooled_size(size: int, layers: Sequence[Layer]) -> int:
    """Spatial size after `layers` (Caffe ceil-mode pooling): 368 -> 184 -> 92 -> 46."""
    for layer in layers:
        if isinstance(layer, MaxPool):
            size = math.ceil((size - layer.window) / layer.stride) + 1
    return size


def receptive_field(layers: Sequence[Layer], rf: float = 1, jump: float = 1) -> tuple[float, float]:
    """(receptive field, jump) in input pixels after `layers`, starting from (rf, jump)."""
    for layer in layers:
        if isinstance(layer, Conv):
            rf += (layer.kernel - 1) * jump
        elif isinstance(layer, MaxPool):
            rf += (layer.window - 1) * jump
            jump *= layer.stride
    return rf, jump


def stage_receptive_fields(m: ml_collections.ConfigDict) -> list[int]:
    """Receptive field of each stage's belief maps, input pixels: 167, 407, 647, ... for the paper."""
    rf1, jump = receptive_field(image_trunk(m) + stage1_head(m))
    trunk_rf, trunk_jump = receptive_field(image_trunk(m) + refinement_features(m))
    fields = [rf1]
    for _ in range(1, m.num_stages):
        rf_in = max(trunk_rf, fields[-1])  # the concat sees image features and previous beliefs
        fields.append(receptive_field(refinement_head(m), rf_in, trunk_jump)[0])
    return [int(f) for f in fields]


@dataclasses.dataclass(frozen=True)
class ConvAt:
    """A convolution as the forward pass runs it: on a (size, size, in_channels) input; `on_image`
    when that input is the image (no gradient flows into it in training)."""
    size: int
    in_channels: int
    kernel: int
    features: int
    on_image: bool = False

    @property
    def multiply_adds(self) -> int:
        """Per image: size^2 output pixels x kernel^2 x in_channels x features."""
        return self.size ** 2 * self.kernel ** 2 * self.in_channels * self.features


def convolutions_at(layers: Sequence[Layer], size: int, channels: int,
                    on_image: bool = False) -> tuple[list[ConvAt], int, int]:
    """(each convolution of `layers` on a (size, size, channels) input, output size, output channels)."""
    convs = []
    for layer in layers:
        if isinstance(layer, Conv):
            convs.append(ConvAt(size, channels, layer.kernel, layer.features, on_image and not convs))
            channels = layer.features
        elif isinstance(layer, MaxPool):
            size = pooled_size(size, [layer])
    return convs, size, channels


def model_convolutions(m: ml_collections.ConfigDict) -> collections.Counter:
    """How many times one forward pass runs each distinct convolution: {ConvAt: count}."""
    stage1, _, _ = convolutions_at(image_trunk(m) + stage1_head(m), m.input_size, 3, on_image=True)
    counts = collections.Counter(stage1)
    if m.num_stages > 1:
        trunk, size, channels = convolutions_at(image_trunk(m), m.input_size, 3, on_image=True)
        features, _, _ = convolutions_at(refinement_features(m), size, channels)
        head, _, _ = convolutions_at(refinement_head(m), size, concat_channels(m))
        counts.update(trunk)
        for _ in range(1, m.num_stages):
            counts.update(features + head)
    return counts


def forward_multiply_adds(m: ml_collections.ConfigDict) -> int:
    """Convolution multiply-adds of one forward pass on one (input_size, input_size, 3) image."""
    return sum(conv.multiply_adds * count for conv, count in model_convolutions(m).items())
