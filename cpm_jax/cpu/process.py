"""Process settings that make XLA:CPU run this model fast; `cpu.backend.setup()` applies them.

  * `prefer_eigen_cpu_convolutions`: XLA:CPU convolutions on Eigen rather than YNNPACK (jaxlib
    0.10), which is much slower on this model's large-kernel weight gradients. XLA reads
    `XLA_FLAGS` when JAX initialises its backends, so this works after `import jax` but not once
    JAX has run anything.
  * `keep_freed_memory`: glibc's malloc keeps freed blocks for reuse, so XLA:CPU's per-step
    buffers stop page-faulting back in every step.
  * `run_cpu_computations_inline`: JAX's CPU computations run on the calling thread, so that
    their temporary buffers come from the heap malloc keeps, not a worker thread's arena.
  * `idle_openmp_threads_sleep`: oneDNN's OpenMP threads sleep when idle instead of spinning, so
    that the tf.data pipeline's threads and other runtimes in the process get the cores.

Each returns a sentence saying what it did, or why not; each leaves a user's own setting alone.
Why each helps, with figures: docs/performance.md.
"""
import ctypes
import importlib.metadata
import os
import sys

CPU_CONVOLUTION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_MEASURED_JAXLIB = "0.10."  # the flag's speed-up was measured on this series only

MALLOC_KEEP_BYTES = 1 << 30  # glibc's mmap / trim thresholds set by setup(); see keep_freed_memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt options, <malloc.h>
ASYNC_DISPATCH_VARIABLE = "JAX_CPU_ENABLE_ASYNC_DISPATCH"  # a user's choice; see run_cpu_computations_inline
OPENMP_WAIT_VARIABLE = "OMP_WAIT_POLICY"    # a user's choice; see idle_openmp_threads_sleep


def prefer_eigen_cpu_convolutions() -> str:
    """Adds CPU_CONVOLUTION_FLAG to `XLA_FLAGS` where it helps and can still take effect; returns
    a sentence saying what was done and why (setup() logs it)."""
    existing = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in existing:
        return f"XLA_FLAGS left as given ({existing!r}): it already chooses the CPU convolution path"
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return "XLA_FLAGS unchanged: jaxlib not found"
    if not version.startswith(_MEASURED_JAXLIB):
        return (f"XLA_FLAGS unchanged: {CPU_CONVOLUTION_FLAG} was measured on jaxlib "
                f"{_MEASURED_JAXLIB}x only (this is {version}); re-measure before carrying it over")
    if _jax_backends_initialised():
        return (f"XLA_FLAGS unchanged: JAX's backends are already initialised and XLA reads the flags "
                f"only then; {CPU_CONVOLUTION_FLAG} would need setup() before JAX runs anything")
    os.environ["XLA_FLAGS"] = f"{existing} {CPU_CONVOLUTION_FLAG}".strip()
    return (f"XLA_FLAGS += {CPU_CONVOLUTION_FLAG} (jaxlib {version}: XLA:CPU convolutions on Eigen "
            "instead of YNNPACK, up to 2x faster for this model; no effect on GPU/TPU)")


def keep_freed_memory() -> str:
    """Has glibc's malloc keep freed blocks of up to MALLOC_KEEP_BYTES in the process instead of
    unmapping them (`mallopt` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD); returns a sentence saying
    what was done, or why not (setup() logs it).

    XLA:CPU allocates a step's temporary buffers anew on every call and frees them after; with
    glibc's defaults a block that large is mapped from the kernel and unmapped again, so every
    step page-faults all of its temporary memory back in, zero-filled by the kernel; kept, the
    faults nearly vanish and the demo's step takes about 40% less time (docs/performance.md).
    The cost: memory freed by the process stays in it for reuse (its peak does not grow). Left
    alone where the user set any MALLOC_*_ variable, or the C library is not glibc."""
    chosen = sorted(k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_"))
    if chosen:
        return f"malloc left as configured ({', '.join(chosen)})"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "malloc unchanged: not glibc (no mallopt)"
    if not all(mallopt(option, ctypes.c_int(MALLOC_KEEP_BYTES))
               for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)):
        return "malloc unchanged: glibc refused the thresholds"
    return (f"glibc malloc keeps freed blocks up to {MALLOC_KEEP_BYTES >> 20} MiB for reuse (mmap and "
            "trim thresholds): XLA:CPU's per-step buffers stop page-faulting back in every step")


def run_cpu_computations_inline() -> str:
    """Sets `jax_cpu_enable_async_dispatch` False where it can still take effect (JAX reads it when
    it makes its CPU client); returns a sentence saying what was done, or why not (setup() logs it).

    JAX runs a CPU computation on a worker thread by default, and XLA:CPU allocates the
    computation's temporary buffers there, from that thread's malloc arena, which maps any block
    over 64 MiB from the kernel whatever keep_freed_memory() sets, and unmaps it when freed: every
    step page-faults all of its temporary memory back in. Run inline, on the calling thread, they
    come from the main heap that keep_freed_memory() keeps (up to MALLOC_KEEP_BYTES): the
    paper-width step at 128x128 (1.4 GB of temporaries) takes 23% less time, the demo's (under
    64 MiB) the same (docs/performance.md). Beyond MALLOC_KEEP_BYTES (the paper model's 368x368 step:
    5.7 GB) the buffers are still mapped anew. What it costs: Python does not prepare the next
    step while one runs (about a millisecond). Only single-device computations: pmap across
    devices stays asynchronous. Left alone where the user set JAX_CPU_ENABLE_ASYNC_DISPATCH."""
    if ASYNC_DISPATCH_VARIABLE in os.environ:
        return f"CPU dispatch left as configured ({ASYNC_DISPATCH_VARIABLE}={os.environ[ASYNC_DISPATCH_VARIABLE]})"
    if _jax_backends_initialised():
        return ("CPU dispatch unchanged (asynchronous): JAX's backends are already initialised; "
                "setup() before JAX runs anything runs CPU computations inline")
    import jax
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return ("JAX's CPU computations run inline (jax_cpu_enable_async_dispatch False): their "
            "temporary buffers come from the heap malloc keeps")


def _jax_backends_initialised() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another JAX: cannot tell; setting the flag is harmless
        return False


def idle_openmp_threads_sleep() -> str:
    """Sets OMP_WAIT_POLICY=PASSIVE where the user has not chosen, before oneDNN's GNU OpenMP
    runtime loads (it reads the variable once, then); returns a sentence saying what was done.

    By default GNU OpenMP's threads spin for a while after each parallel region, waiting for the
    next; between oneDNN's convolutions that is what the other threads of the process need: the
    input pipeline feeding training, an exported model's runtime timed beside JAX (which ran 2.5x
    slower). Sleeping costs oneDNN nothing measurable here (docs/performance.md)."""
    if OPENMP_WAIT_VARIABLE in os.environ:
        return f"{OPENMP_WAIT_VARIABLE} left as given ({os.environ[OPENMP_WAIT_VARIABLE]!r})"
    os.environ[OPENMP_WAIT_VARIABLE] = "PASSIVE"
    return f"{OPENMP_WAIT_VARIABLE}=PASSIVE: oneDNN's idle OpenMP threads sleep instead of spinning"
