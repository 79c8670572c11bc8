"""The one seam between the portable code and a platform backend: which convolution a model uses.

The Flax model (`model.cpm.CPM`) takes its convolution as a field, `lax.conv_general_dilated` by
default. Every place that builds a model to run it calls `make_model`, which gives it the CPU
backend's convolution when `runtime.setup()` registered one (`use_cpu_convolution`) and JAX's
default backend is the CPU; on a GPU or TPU, or where nothing was registered (a notebook that
never called set-up, CPM_JAX_CPU_BACKEND=0), XLA's own. Both compute the same function; they
differ in speed only.
"""
from typing import Callable

import jax
import ml_collections
from jax import lax

from cpm_jax.model import cpm

_cpu_convolution: Callable | None = None


def use_cpu_convolution(conv: Callable | None) -> None:
    """Registers `conv` (`lax.conv_general_dilated`'s signature) for models built on a CPU; None
    forgets it."""
    global _cpu_convolution
    _cpu_convolution = conv


def convolution() -> Callable:
    """The convolution a model built now runs: the registered CPU one on a CPU, else XLA's."""
    if _cpu_convolution is not None and jax.default_backend() == "cpu":
        return _cpu_convolution
    return lax.conv_general_dilated


def make_model(model_config: ml_collections.ConfigDict) -> cpm.CPM:
    """`cpm.CPM(model_config)` with this process's convolution."""
    return cpm.CPM(model_config, conv=convolution())
