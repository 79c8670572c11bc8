"""The PyTorch peer of the benchmark computes what the Flax model computes: parameter counts,
pooling sizes, beliefs, loss, gradients and the optimiser update, from ported Flax parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax import configs
from cpm_jax.benchmarks import runners
from cpm_jax.model import architecture as arch
from cpm_jax.model import cpm as cpm_model
from cpm_jax.model import losses, summary
from cpm_jax.model.pooling import caffe_max_pool
from cpm_jax.training import optimizers, state
from tests.conftest import tiny_config

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[bench]' (CI installs it)")
from cpm_jax.benchmarks import torch_peer  # noqa: E402  (needs torch)


def parity_config(num_stages=3, dropout_rate=0.0):
    """A tiny config with 5x5 kernels everywhere (a flipped or transposed kernel shows) and
    distinct widths (a swapped in/out axis does not fit)."""
    config = tiny_config(num_stages=num_stages, input_size=32, dropout_rate=dropout_rate)
    m = config.model
    m.trunk_kernel = m.stage1_kernel = m.stage_kernel = 5
    m.trunk_features, m.bottleneck_features, m.stage1_features, m.stage_features = 4, 5, 6, 7
    return config


def flax_params(config, seed=0):
    """Random Flax parameters in the tree `state.create` makes (shapes by `state.abstract`):
    He-normal kernels and random, not zero, biases, so that the bias port is tested too."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "kernel":
            return (rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, state.abstract(config).params)


def ported(config, params, memory_format=torch_peer.MEMORY_FORMAT):
    module = torch_peer.build(config.model, memory_format)
    torch_peer.port_params(module, params)
    return module


def assert_close(actual, expected, what, rel=1e-4):
    """Agreement to `rel` of the expected values' scale (float32 sums in another order)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    scale = float(np.abs(expected).max())
    assert scale > 0, what
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale, err_msg=what)


def test_parameter_counts_match_flax():
    config = parity_config()
    flax_count = summary.count(state.abstract(config).params)
    assert torch_peer.parameter_count(torch_peer.build(config.model)) == flax_count
    paper = configs.paper_model(num_stages=6, num_parts=14)
    assert torch_peer.parameter_count(torch_peer.build(paper)) == summary.describe(paper)["params"] == 31_219_866


@pytest.mark.parametrize("size", [128, 368, 184, 92, 32, 64, 33, 45, 7, 6, 5])
def test_torch_ceil_mode_pool_is_caffe_pool(size):
    x = np.random.default_rng(size).normal(size=(1, size, size + 2, 2)).astype(np.float32)
    theirs = torch.nn.functional.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 3, 2, ceil_mode=True)
    assert theirs.shape[2:] == (arch.pooled_size(size, [arch.MaxPool()]), arch.pooled_size(size + 2, [arch.MaxPool()]))
    np.testing.assert_array_equal(theirs.permute(0, 2, 3, 1).numpy(), caffe_max_pool(jnp.asarray(x), 3, 2))


def test_beliefs_match_flax_in_both_memory_formats():
    config = parity_config()
    params = flax_params(config)
    batch = runners.random_batch(config, 2)
    expected = cpm_model.CPM(config.model).apply({"params": params}, batch["image"], batch["center_map"])
    for memory_format in (torch.channels_last, torch.contiguous_format):
        beliefs = torch_peer.make_inference(ported(config, params, memory_format))(batch["image"], batch["center_map"])
        assert beliefs.shape == (2, 3, 4, 4, config.model.num_parts + 1)
        assert_close(beliefs, expected, f"beliefs, {memory_format}")


def test_train_step_loss_gradients_and_update_match_jax():
    """One caffe_sgd step (dropout 0): the loss, every gradient and every parameter update."""
    config = parity_config()
    config.optimizer = configs.paper_optimizer()
    config.optimizer.learning_rate = 1e-2  # updates well above float32 rounding of the weights
    config.optimizer.weight_decay = 1.0    # decay of the order of the gradient: misplaced decay shows
    params = flax_params(config)
    batch = runners.random_batch(config, 2)
    model = cpm_model.CPM(config.model)

    def loss_fn(p):
        beliefs = model.apply({"params": p}, batch["image"], batch["center_map"], train=True)
        return losses.cpm_loss(beliefs, batch["targets"])

    (loss, per_stage), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    tx = optimizers.make(config.optimizer, params)
    updates, _ = tx.update(grads, tx.init(params), params)

    module = ported(config, params)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    assert torch_peer.make_train_step(module, config)(batch) == pytest.approx(float(loss), rel=1e-5)
    for name, p in module.named_parameters():
        *scope, leaf = name.split(".")
        path = tuple(scope) + ({"weight": "kernel", "bias": "bias"}[leaf],)
        hwio = (lambda t: t.permute(2, 3, 1, 0)) if p.ndim == 4 else (lambda t: t)
        jax_grad, jax_update = grads, updates
        for key in path:
            jax_grad, jax_update = jax_grad[key], jax_update[key]
        assert_close(hwio(p.grad).numpy(), jax_grad, f"gradient of {name}", rel=1e-3)
        assert_close(hwio(p.detach() - before[name]).numpy(), jax_update, f"update of {name}", rel=1e-3)

    config.loss.intermediate_supervision = False  # only the last stage counts
    last_only = torch_peer.make_train_step(ported(config, params), config)(batch)
    assert last_only == pytest.approx(float(per_stage[-1]), rel=1e-5)


def test_port_params_names_what_does_not_fit():
    config = parity_config(num_stages=2)
    wider = parity_config(num_stages=2)
    wider.model.trunk_features = 6
    with pytest.raises(ValueError, match=r"params/stage1/layers/conv1/kernel: Flax shape \(5, 5, 3, 6\)"):
        torch_peer.port_params(torch_peer.build(config.model), flax_params(wider))
    with pytest.raises(ValueError, match="params/stage3/features/conv1/kernel: not in the Flax parameters"):
        torch_peer.port_params(torch_peer.build(parity_config(num_stages=3).model), flax_params(config))
    with pytest.raises(ValueError, match="no torch counterpart: stage2/"):
        torch_peer.port_params(torch_peer.build(parity_config(num_stages=1).model), flax_params(config))


def test_train_step_learns_and_dropout_is_train_only():
    config = tiny_config(num_stages=2, dropout_rate=0.5)  # adam
    torch.manual_seed(0)
    module = torch_peer.build(config.model)
    batch = runners.random_batch(config, 4)
    predict = torch_peer.make_inference(module)
    beliefs = predict(batch["image"], batch["center_map"])
    assert beliefs.shape == (4, 2, 4, 4, 15) and beliefs.dtype == np.float32
    eval_loss = float(losses.cpm_loss(beliefs, batch["targets"])[0])
    step = torch_peer.make_train_step(module, config)
    first, second = step(batch), step(batch)
    assert np.isfinite([first, second]).all() and first != second
    assert first != pytest.approx(eval_loss, rel=1e-5)  # the step's forward has dropout on

    beliefs = predict(batch["image"], batch["center_map"])
    np.testing.assert_array_equal(predict(batch["image"], batch["center_map"]), beliefs)
    module.train()
    with torch.no_grad():
        noisy = torch_peer.beliefs_to_numpy(module(*torch_peer.to_torch_inputs(batch["image"], batch["center_map"])))
    assert not np.allclose(noisy[:, 0], beliefs[:, 0])  # stage 1 has dropout in training
