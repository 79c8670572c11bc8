"""The things a benchmark times: JAX's training step and forward pass, the PyTorch peer, the input pipeline.

Each runner is built once (compiled, its data resident on the devices) and then called with no
arguments, so that timing it (`timing.alternate`) measures the call alone:
  * `JaxTraining`: the step `train` runs (`step.parallel_train_step`: forward, backward,
    update), placed and called as `train` calls it, on one fixed random batch (`random_batch`);
  * `JaxInference`: the model's forward pass in eval mode;
  * `TorchPeer`: the same network in PyTorch (`torch_peer.py`) with the JAX parameters;
  * `pipeline_rate` / `fed_rate`: the tf.data training pipeline alone, and training steps fed by
    it as `train` runs them.
Rates are images per second; compile times seconds; FLOPs as XLA's cost analysis counts them.
"""
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cpm_jax import platform
from cpm_jax.benchmarks.timing import compilations, timed
from cpm_jax.model import architecture
from cpm_jax.training import step


def random_batch(config: ml_collections.ConfigDict, batch: int, seed: int = 0) -> dict:
    """A training batch of the config's shapes with random values: image (B, H, W, 3) normalised,
    center_map (B, H/8, W/8, 1), targets (B, H/8, W/8, P+1)."""
    m = config.model
    rng = np.random.default_rng(seed)
    cells = architecture.pooled_size(m.input_size, architecture.image_trunk(m))
    return {
        "image": architecture.normalise_image(rng.uniform(0, 255, (batch, m.input_size, m.input_size, 3))).astype(np.float32),
        "center_map": rng.uniform(0, 1, (batch, cells, cells, 1)).astype(np.float32),
        "targets": rng.uniform(0, 1, (batch, cells, cells, m.num_parts + 1)).astype(np.float32),
    }


def per_device(batch: dict, num_devices: int) -> dict:
    """(B, ...) -> (devices, B / devices, ...), as `pipeline.train_batches` gives."""
    return {k: v.reshape((num_devices, -1) + v.shape[1:]) for k, v in batch.items()}


def xla_flops(computation) -> float | None:
    """FLOPs XLA's cost analysis counts for a lowered or compiled computation (None where it
    gives none; a lowered one's count, before XLA's optimisations, is within 1% of it)."""
    analysis = computation.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class JaxTraining:
    """The training step of `train.py` on one fixed batch, called as `train` calls it (the jitted
    step, the state placed by `train.replicate`, each step fed the last one's donated state), so
    that a recompilation `train` would meet shows here; `step()` runs one."""

    def __init__(self, config: ml_collections.ConfigDict, state, batch: dict):
        devices = jax.local_device_count()
        self._step = step.parallel_train_step(config)
        self._p_state = step.replicate(state)
        self._batch = jax.pmap(lambda x: x)(per_device(batch, devices))  # resident on the devices
        self._rng = step.replicate(jax.random.key(1))
        self.flops = xla_flops(self._step.lower(self._p_state, self._batch, self._rng))  # no compilation
        with compilations() as seconds:  # the step's own compilation, on its first call
            timed(self.step)
        self.compile_s = sum(seconds)

    def step(self):
        self._p_state, metrics = self._step(self._p_state, self._batch, self._rng)
        return metrics["loss"]

    def fed_step(self, batch: dict):
        """One step on a pipeline batch ((devices, B/devices, ...) numpy arrays, as train gets;
        the keys the step does not read (joints, visibility) left out)."""
        batch = {k: batch[k] for k in self._batch}
        self._p_state, metrics = self._step(self._p_state, batch, self._rng)
        return metrics["loss"]


class JaxInference:
    """The model's forward pass (eval mode) on one fixed batch; `run()` returns the beliefs."""

    def __init__(self, config: ml_collections.ConfigDict, params, batch: dict):
        model = platform.make_model(config.model)
        forward = jax.jit(lambda p, image, center: model.apply({"params": p}, image, center, train=False))
        self._args = (params, jnp.asarray(batch["image"]), jnp.asarray(batch["center_map"]))
        start = time.perf_counter()
        self._compiled = forward.lower(*self._args).compile()
        self.compile_s = time.perf_counter() - start
        self.flops = xla_flops(self._compiled)

    def run(self):
        return self._compiled(*self._args)


class TorchPeer:
    """The same network in PyTorch with the JAX parameters; `step()` trains, `run()` predicts."""

    def __init__(self, config: ml_collections.ConfigDict, params, batch: dict, jax_param_count: int):
        from cpm_jax.benchmarks import torch_peer
        self.module = torch_peer.build(config.model)
        self.param_count = torch_peer.parameter_count(self.module)
        if self.param_count != jax_param_count:
            raise AssertionError(f"the PyTorch peer has {self.param_count:,} parameters, the JAX model "
                                 f"{jax_param_count:,}: not the same network")
        torch_peer.port_params(self.module, jax.device_get(params))
        self.version = torch_peer.torch.__version__
        self.threads = torch_peer.torch.get_num_threads()
        self._batch = batch
        self._train = torch_peer.make_train_step(self.module, config)
        self._infer = torch_peer.make_inference(self.module)

    def step(self):
        return self._train(self._batch)

    def run(self):
        return self._infer(self._batch["image"], self._batch["center_map"])


def pipeline_rate(config: ml_collections.ConfigDict, batch: int, batches: int) -> float:
    """Images/s of the training pipeline alone (after its first 2 batches, which fill buffers)."""
    from data_pipelines import pipeline
    config = with_batch(config, batch)
    with pipeline.train_batches(config, 1) as stream:
        return stream_rate(stream, batch, batches)


def stream_rate(stream, batch: int, batches: int) -> float:
    """Images/s of `batches` batches of `batch` images drawn from `stream`, after its first 2
    (which fill its buffers)."""
    for _ in range(2):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - start)


def fed_rate(config: ml_collections.ConfigDict, training: JaxTraining, batch: int, steps: int) -> float:
    """Images/s of training steps fed by the pipeline, as `train` runs them (after 2 steps)."""
    from data_pipelines import pipeline
    config = with_batch(config, batch)
    with pipeline.train_batches(config, jax.local_device_count()) as stream:
        for _ in range(2):
            jax.block_until_ready(training.fed_step(next(stream)))
        start = time.perf_counter()
        for _ in range(steps):
            loss = training.fed_step(next(stream))
        jax.block_until_ready(loss)
        return steps * batch / (time.perf_counter() - start)


def with_batch(config: ml_collections.ConfigDict, batch: int) -> ml_collections.ConfigDict:
    """A copy of `config` with `training.global_batch_size = batch`."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.training.global_batch_size = batch
    return config
