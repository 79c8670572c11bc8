"""The same CPM in PyTorch, for `python -m cpm_jax.bench --compare torch` only (never needed to
train): built from the `architecture` layer lists, as the Flax model, so the two cannot drift.

Torch names mirror the Flax parameter tree ("stage2.head.conv1.weight" is
params["stage2"]["head"]["conv1"]["kernel"]), so that `port_params` can copy a Flax model in and
the tests can check that both compute the same beliefs, loss and gradients. Tensors are NCHW as
torch's convolutions want them; `to_torch_inputs` and `beliefs_to_numpy` convert from and to the
project's NHWC arrays. Float32 throughout, whatever `model.dtype` says (float32 is what "auto"
means on a CPU).
"""
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cpm_jax.model import architecture as arch

# The faster layout on CPU (oneDNN). Measured on 2 shared cores, median seconds, batch 8, training
# step (forward, backward, Adam) / inference: paper widths at 128x128, channels_last 4.84 / 1.62
# vs NCHW 4.89 / 1.67; the demo config (experiments/synthetic.py) 0.107 / 0.034 vs 0.130 / 0.052.
MEMORY_FORMAT = torch.channels_last


class LayerStack(nn.Module):
    """Applies an `architecture` layer list to (B, C, H, W): conv (+ReLU), Caffe max-pool, dropout.

    Convolutions are named conv1, conv2, ... as in the Flax LayerStack."""

    def __init__(self, layers: Sequence[arch.Layer], in_channels: int):
        super().__init__()
        self.plan = tuple(layers)
        convs = 0
        for layer in self.plan:
            if isinstance(layer, arch.Conv):
                convs += 1
                # torch's "same" puts an even kernel's extra row/column at the end, as Flax's "SAME".
                self.add_module(f"conv{convs}", nn.Conv2d(in_channels, layer.features, layer.kernel,
                                                          padding="same"))
                in_channels = layer.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = 0
        for layer in self.plan:
            if isinstance(layer, arch.Conv):
                convs += 1
                x = getattr(self, f"conv{convs}")(x)
                if layer.relu:
                    x = F.relu(x)
            elif isinstance(layer, arch.MaxPool):
                # Caffe's ceil rounding; no window starts in the padding for these sizes.
                x = F.max_pool2d(x, layer.window, layer.stride, ceil_mode=True)
            else:
                x = F.dropout(x, layer.rate, self.training)
        return x


class RefinementStage(nn.Module):
    """Stage t >= 2: (trunk features, beliefs of stage t-1, center map) -> beliefs (B, P+1, h, w)."""

    def __init__(self, m: ml_collections.ConfigDict):
        super().__init__()
        self.features = LayerStack(arch.refinement_features(m), m.trunk_features)
        self.head = LayerStack(arch.refinement_head(m), arch.concat_channels(m))

    def forward(self, trunk_features, previous_beliefs, center_map):
        x = torch.cat([self.features(trunk_features), previous_beliefs, center_map], dim=1)
        return self.head(x)


class TorchCPM(nn.Module):
    """`model.CPM` for a `config.model` ConfigDict: stage1, trunk (if T > 1), stage2 .. stageT.

    Parameters keep torch's default initialisation (set them with `port_params`); dropout is
    active in train mode, as Flax's with train=True. `memory_format` is the layout the inputs are
    given in (`build` sets it)."""

    def __init__(self, model_config: ml_collections.ConfigDict):
        super().__init__()
        m = model_config
        self.memory_format = torch.contiguous_format
        self.stage1 = nn.Module()
        self.stage1.layers = LayerStack(arch.image_trunk(m) + arch.stage1_head(m), 3)
        if m.num_stages > 1:
            self.trunk = nn.Module()
            self.trunk.layers = LayerStack(arch.image_trunk(m), 3)
            for t in range(2, m.num_stages + 1):
                self.add_module(f"stage{t}", RefinementStage(m))
        self.num_stages = m.num_stages

    def forward(self, image: torch.Tensor, center_map: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) normalised, center map (B, 1, H/8, W/8) -> every stage's beliefs
        (B, T, P+1, H/8, W/8)."""
        beliefs = [self.stage1.layers(image)]
        if self.num_stages > 1:
            trunk_features = self.trunk.layers(image)
            for t in range(2, self.num_stages + 1):
                beliefs.append(getattr(self, f"stage{t}")(trunk_features, beliefs[-1], center_map))
        return torch.stack(beliefs, dim=1)


def build(model_config: ml_collections.ConfigDict, memory_format=MEMORY_FORMAT) -> TorchCPM:
    """A `TorchCPM` in `memory_format` (default channels_last, the faster on CPU: see
    MEMORY_FORMAT). Sets torch's intra-op threads (process-wide) to the cores this process may
    use, `len(os.sched_getaffinity(0))`, as XLA's CPU backend does."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    module = TorchCPM(model_config).to(memory_format=memory_format)
    module.memory_format = memory_format
    return module


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def port_params(module: TorchCPM, flax_params) -> None:
    """Copies Flax parameters (kernels HWIO, biases (O,)) into `module` (weights OIHW), in place.

    Raises ValueError naming the parameter when one is missing on either side or its shape
    differs."""
    unused = {"/".join(path) for path in _flax_paths(flax_params)}
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            *scope, leaf = name.split(".")
            path = tuple(scope) + ({"weight": "kernel", "bias": "bias"}[leaf],)
            node = flax_params
            for key in path:
                if key not in node:
                    raise ValueError(f"params/{'/'.join(path)}: not in the Flax parameters (torch {name})")
                node = node[key]
            value = np.array(node, np.float32)  # a writable copy
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            if value.shape != tuple(tensor.shape):
                raise ValueError(f"params/{'/'.join(path)}: Flax shape {np.shape(node)} does not fit "
                                 f"torch {name} {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(value))
            unused.discard("/".join(path))
    if unused:
        raise ValueError(f"Flax parameters with no torch counterpart: {', '.join(sorted(unused))}")


def _flax_paths(tree, prefix=()):
    for key, value in tree.items():
        if hasattr(value, "items"):
            yield from _flax_paths(value, prefix + (key,))
        else:
            yield prefix + (key,)


def to_torch_inputs(image_nhwc: np.ndarray, center_map_nhwc: np.ndarray,
                    memory_format=MEMORY_FORMAT) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, 3) image and (B, h, w, 1) center map -> float32 (B, 3, H, W), (B, 1, h, w) in
    `memory_format` (channels_last keeps the NHWC bytes as they are)."""
    return tuple(torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2).contiguous(
        memory_format=memory_format) for x in (image_nhwc, center_map_nhwc))


def beliefs_to_numpy(beliefs: torch.Tensor) -> np.ndarray:
    """(B, T, P+1, h, w) -> (B, T, h, w, P+1) numpy, the Flax model's layout."""
    return beliefs.detach().permute(0, 1, 3, 4, 2).numpy()


def cpm_loss(beliefs: torch.Tensor, targets: torch.Tensor,
             intermediate_supervision: bool = True) -> torch.Tensor:
    """`losses.cpm_loss`'s total: beliefs (B, T, P+1, h, w), targets (B, P+1, h, w) for every
    stage or (B, T, P+1, h, w) per stage; per stage the sum of squared errors / (2 B)."""
    if targets.ndim == beliefs.ndim - 1:
        targets = targets.unsqueeze(1)
    per_stage = torch.sum(torch.square(beliefs - targets), dim=(0, 2, 3, 4)) / (2.0 * beliefs.shape[0])
    return per_stage.sum() if intermediate_supervision else per_stage[-1]


def make_optimizer(module: TorchCPM, cfg: ml_collections.ConfigDict) -> torch.optim.Optimizer:
    """The torch counterpart of `optimizers.make(cfg, ...)` at a constant learning rate:
    "adam": Adam at cfg.learning_rate (no warm-up or decay); "caffe_sgd": SGD with momentum,
    weight decay on weights only, the per-layer multipliers folded into each group's rate (the
    same update as the optax chain; no step decay)."""
    if cfg.name == "adam":
        return torch.optim.Adam(module.parameters(), lr=cfg.learning_rate)
    if cfg.name == "caffe_sgd":
        groups = []
        for stage1 in (True, False):
            multipliers = cfg.stage1_multipliers if stage1 else cfg.other_multipliers
            for is_weight, multiplier in zip((True, False), multipliers):
                params = [p for name, p in module.named_parameters()
                          if name.startswith("stage1.") == stage1 and name.endswith(".weight") == is_weight]
                groups.append(dict(params=params, lr=cfg.learning_rate * multiplier,
                                   weight_decay=cfg.weight_decay if is_weight else 0.0))
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum)
    raise ValueError(f"config.optimizer.name = {cfg.name!r}: no torch counterpart; known: adam, caffe_sgd")


def make_train_step(module: TorchCPM, config: ml_collections.ConfigDict) -> Callable[[dict], float]:
    """step(batch) -> the loss before the update, as a float. `batch`: numpy "image" (B, H, W, 3)
    normalised, "center_map" (B, h, w, 1), "targets" (B, h, w, P+1) or (B, T, h, w, P+1).

    One step: forward in train mode (stage-1 dropout on), `cpm_loss` honouring
    config.loss.intermediate_supervision, backward, `make_optimizer(config.optimizer)` update.
    The gradients stay in the parameters' .grad until the next step."""
    optimizer = make_optimizer(module, config.optimizer)
    intermediate = config.loss.intermediate_supervision

    def step(batch: dict) -> float:
        module.train()
        image, center_map = to_torch_inputs(batch["image"], batch["center_map"], module.memory_format)
        targets = torch.from_numpy(np.asarray(batch["targets"], np.float32)).movedim(-1, -3)
        optimizer.zero_grad(set_to_none=True)
        loss = cpm_loss(module(image, center_map), targets, intermediate)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def make_layer(conv: arch.ConvAt, batch: int, seed: int = 0) -> tuple[Callable[[], object], Callable[[], object]]:
    """(forward, train) of one convolution with bias as `TorchCPM` runs it (channels_last, the
    process's threads as `build` sets them), on a random (B, in_channels, size, size) input:
    forward() under torch.inference_mode(); train() the forward pass and its backward with a
    fixed output gradient, into the weight, the bias and, unless `conv.on_image`, the input."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(seed)
    layer = nn.Conv2d(conv.in_channels, conv.features, conv.kernel, padding="same").to(memory_format=MEMORY_FORMAT)
    x = torch.from_numpy(rng.standard_normal((batch, conv.in_channels, conv.size, conv.size), np.float32))
    x = x.to(memory_format=MEMORY_FORMAT).requires_grad_(not conv.on_image)
    grad = torch.from_numpy(rng.standard_normal((batch, conv.features, conv.size, conv.size), np.float32))
    grad = grad.to(memory_format=MEMORY_FORMAT)

    def forward():
        with torch.inference_mode():
            return layer(x)

    def train():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(grad)
        return layer.weight.grad

    return forward, train


def make_inference(module: TorchCPM) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """predict(image (B, H, W, 3), center map (B, h, w, 1)) -> beliefs (B, T, h, w, P+1) numpy,
    in eval mode (no dropout) under torch.inference_mode()."""
    def predict(image: np.ndarray, center_map: np.ndarray) -> np.ndarray:
        module.eval()
        with torch.inference_mode():
            return beliefs_to_numpy(module(*to_torch_inputs(image, center_map, module.memory_format)))

    return predict
