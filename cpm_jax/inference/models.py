"""The model that predicts, from where a user names it: a training workdir's newest checkpoint
(`--workdir`), a model shipped in pretrained/ (`--pretrained`), or an exported file run in its
own runtime (`--model`: a .onnx, a .tflite or a SavedModel; cpm_jax/serving).

`open_config` reads only what says what the model is (config.json, the shipped record, the
export's model card), so that a command can check its inputs against it before any weights load;
`load` then gives a `Model`, whose `predictor` runs the paper's multi-scale procedure
(evaluation/multiscale.py) with JAX's network or, for an exported model, with its runtime called
from the jitted procedure (`jax.pure_callback`): same crops, same resampling, same arg-max.
"""
import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from cpm_jax import errors
from cpm_jax.model import architecture


@dataclasses.dataclass(frozen=True)
class Source:
    """Exactly one of: a workdir, a shipped model's name (or .npz path), an exported file."""
    workdir: str | None = None
    pretrained: str | None = None
    exported: str | None = None

    def __post_init__(self):
        if sum(x is not None for x in (self.workdir, self.pretrained, self.exported)) != 1:
            raise errors.InputError("give the model with exactly one of --workdir DIR, --pretrained NAME "
                                    "and --model FILE (an exported .onnx, .tflite or SavedModel)")

    def as_dict(self) -> dict:
        """{"workdir", "pretrained", "model"}: the one given, the others None (the reports' keys)."""
        return {"workdir": self.workdir, "pretrained": self.pretrained, "model": self.exported}


@dataclasses.dataclass
class Model:
    """A loaded model: its training config, `apply_fn(variables, crops uint8 (N, S, S, 3)) ->
    beliefs (N, T, S/8, S/8, P+1)` with its `variables` (None for an exported model), the
    checkpoint step (None where unknown) and `runtime` ("jax", "onnxruntime", "tensorflow", "tflite")."""
    config: ml_collections.ConfigDict
    apply_fn: Callable
    variables: Any
    step: int | None
    runtime: str

    def predictor(self, options):
        """A `multiscale.MultiScalePredictor` of this model with `options`."""
        from cpm_jax.evaluation import multiscale
        return multiscale.MultiScalePredictor.for_network(self.config, self.apply_fn, self.variables, options)


def open_config(source: Source) -> ml_collections.ConfigDict:
    """The model's training config, without loading weights. CheckpointError / NoCheckpointError
    naming the file: a workdir without a checkpoint or config.json, a missing or corrupt record."""
    if source.workdir is not None:
        from cpm_jax.training import checkpointing
        checkpointing.open_latest(source.workdir)
        return checkpointing.read_config(source.workdir)
    if source.pretrained is not None:
        from cpm_jax.model import pretrained
        return ml_collections.ConfigDict(pretrained.read_info(source.pretrained)["config"])
    from cpm_jax.serving import runtimes
    return runtimes.load(source.exported).config


def load(source: Source) -> Model:
    """The model `source` names (`Model`); the CPU backend's convolutions where the process set
    them up (`platform.make_model`), the exported file's runtime for `source.exported`."""
    from cpm_jax.evaluation import multiscale
    if source.exported is not None:
        from cpm_jax.serving import runtimes
        exported = runtimes.load(source.exported)
        return Model(exported.config, runtime_network(exported.beliefs, exported.config), None, None,
                     exported.runtime)
    from cpm_jax import platform
    if source.workdir is not None:
        from cpm_jax.training import checkpointing, state
        config = checkpointing.read_config(source.workdir)
        variables, step = state.restore_params(source.workdir, config)
    else:
        from cpm_jax.model import pretrained
        config, variables, info = pretrained.load(source.pretrained)
        step = info["source"]["step"]
    network = multiscale.crop_network(platform.make_model(config.model), config)
    return Model(config, network, variables, int(step), "jax")


def runtime_network(beliefs: Callable[[np.ndarray], np.ndarray], config: ml_collections.ConfigDict) -> Callable:
    """`beliefs(crops uint8 (N, S, S, 3)) -> (N, T, S/8, S/8, P+1)` on the host (an exported
    model's runtime) as an `apply_fn` that jitted code can call (`jax.pure_callback`)."""
    m = config.model
    cells = m.input_size // architecture.STRIDE

    def host(crops):
        return np.asarray(beliefs(np.asarray(crops, np.uint8)), np.float32)

    def apply(variables, crops):
        shape = jax.ShapeDtypeStruct((crops.shape[0], m.num_stages, cells, cells, m.num_parts + 1), np.float32)
        return jax.pure_callback(host, shape, crops)
    return apply
