"""`setup()`: the CPU backend turned on for this process (`runtime.setup()` calls it)."""
import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Backend:
    """What `setup()` did: the convolution for CPU models, one sentence per setting (for the log),
    and whether it runs slower than it should (oneDNN's kernels could not be loaded here)."""
    convolution: Callable
    notes: tuple[str, ...]
    degraded: bool


def setup() -> Backend:
    """Applies the process settings (before JAX initialises its backends, where they can still
    take effect) and loads oneDNN's kernels; idempotent."""
    from cpm_jax.cpu import process
    notes = [process.prefer_eigen_cpu_convolutions(), process.keep_freed_memory(),
             process.run_cpu_computations_inline(), process.idle_openmp_threads_sleep()]
    from cpm_jax.cpu import convolution, onednn  # import JAX, which the XLA flag above must precede
    notes.append(onednn.setup())
    return Backend(convolution.conv_general_dilated, tuple(notes),
                   degraded=onednn.supported_platform() and not onednn.available())
