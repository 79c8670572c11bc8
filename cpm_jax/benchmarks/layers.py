"""Where a training step's time goes, convolution by convolution, and the form each one runs in.

`layer_times` times each distinct convolution of the model (`architecture.model_convolutions`)
alone, forward and training (forward and gradients), in JAX and optionally in PyTorch
(`torch_peer.make_layer`), with how many times the forward pass runs it: summed over the model
(x count) and set against the whole training step, it says which layers cost the most and where
JAX stands against PyTorch. On a CPU, `layer_form` / `convolution_forms` say which form
`cpu.convolution` picks for each layer (`convolution.cpu_form`: DFT matrix products, oneDNN,
the narrow-layer forms or XLA's convolution); an accelerator always runs XLA's.
Times are milliseconds per call on the whole batch (medians of samples of LAYER_SAMPLE_S seconds).
"""
import dataclasses
import functools
import statistics
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from cpm_jax.benchmarks.timing import LAYER_SAMPLE_S, PAUSE_S, alternate, calls_lasting, repeat
from cpm_jax.cpu import convolution
from cpm_jax.model import architecture

FORM_NAMES = {"dft": "as DFT matrix products (convolution.dft_conv)", "onednn": "on oneDNN",
              "narrow": "in the narrow-layer forms", "xla": "on XLA's convolution"}


def jax_layer(conv: architecture.ConvAt, batch: int, dtype: str, seed: int = 0) -> tuple[Callable, Callable]:
    """(forward, train) of one convolution with bias as the model runs it (`nn.Conv` with
    `convolution.conv_general_dilated`, "SAME"), compiled, on a random (B, size, size, in_channels)
    input: forward() not differentiated; train() the forward pass and the gradients of the kernel,
    the bias and, unless `conv.on_image`, the input, for a fixed output cotangent."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, conv.size, conv.size, conv.in_channels), np.float32), dtype)
    kernel = jnp.asarray(rng.standard_normal((conv.kernel, conv.kernel, conv.in_channels, conv.features), np.float32))
    bias = jnp.zeros((conv.features,), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((batch, conv.size, conv.size, conv.features), np.float32), dtype)
    layer = nn.Conv(conv.features, (conv.kernel, conv.kernel), padding="SAME", dtype=dtype,
                    conv_general_dilated=convolution.conv_general_dilated)
    variables = {"params": {"kernel": kernel, "bias": bias}}

    def apply(variables, x):
        return layer.apply(variables, x)

    def gradients(variables, x):  # the output too: a convolution's gradients do not need it
        out, vjp = jax.vjp(apply, variables, x)
        grads = vjp(cotangent)
        return out, (grads[0] if conv.on_image else grads)

    forward = jax.jit(apply).lower(variables, x).compile()
    train_ = jax.jit(gradients).lower(variables, x).compile()
    return (lambda: forward(variables, x)), (lambda: train_(variables, x))


def layer_form(conv: architecture.ConvAt, batch: int, dtype: str) -> str:
    """`convolution.cpu_form` of one of the model's ("SAME") convolutions at this batch size."""
    shape = (batch, conv.size, conv.size, conv.in_channels)
    kernel = (conv.kernel, conv.kernel, conv.in_channels, conv.features)
    pads = jax.lax.padtype_to_pads(shape[1:3], kernel[:2], (1, 1), "SAME")
    return convolution.cpu_form(shape, kernel, pads, jnp.dtype(dtype))


def convolution_forms(m: ml_collections.ConfigDict, batch: int) -> dict:
    """How many of a forward pass's convolutions each `convolution.cpu_form` takes on a CPU."""
    forms = {}
    for conv, count in architecture.model_convolutions(m).items():
        form = layer_form(conv, batch, m.dtype)
        forms[form] = forms.get(form, 0) + count
    return forms


def layer_times(config: ml_collections.ConfigDict, batch: int, steps: int, compare: str,
                pause: float = PAUSE_S) -> list[dict]:
    """Median milliseconds of each distinct convolution of the model (`architecture.model_convolutions`),
    forward and training (forward + gradients), in JAX and, with compare="torch", PyTorch,
    alternating frameworks (`alternate`, `pause` seconds between runners); one dict per
    convolution, with how many times the forward pass runs it."""
    if compare == "torch":
        from cpm_jax.benchmarks import torch_peer
    rows = []
    for conv, count in architecture.model_convolutions(config.model).items():
        runners = dict(zip(("jax_forward", "jax_train"), jax_layer(conv, batch, config.model.dtype)))
        if compare == "torch":
            runners.update(zip(("torch_forward", "torch_train"), torch_peer.make_layer(conv, batch)))
        repeats = {name: calls_lasting(LAYER_SAMPLE_S, run) for name, run in runners.items()}
        times = alternate({name: functools.partial(repeat, run, repeats[name]) for name, run in runners.items()},
                          steps, rounds=2 if compare else 1, pause=pause)
        rows.append({**dataclasses.asdict(conv), "count": count,
                     "jax_form": layer_form(conv, batch, config.model.dtype) if jax.default_backend() == "cpu" else "xla",
                     **{f"{name}_ms": 1e3 * statistics.median(seconds) / repeats[name]
                        for name, seconds in times.items()}})
    return rows
