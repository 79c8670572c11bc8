"""The process set-up every entry point runs first thing in `main`: `runtime.setup()`.

Importing a module of this project changes nothing in the process (no environment variable, no
matplotlib backend, no TensorFlow device list, no exit hook). What a command-line run needs is
done here, explicitly, once:

  * XLA:CPU convolutions on Eigen rather than YNNPACK (jaxlib 0.10): `XLA_FLAGS` gets
    `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`. YNNPACK is much slower on
    this model's large-kernel weight gradients (reference section 8: a 6-stage step at 128x128,
    batch 8, 12.9 s -> 6.6 s). Measured here with the flag set by setup() after `import jax`:
    9x9 128->128 conv gradient at 64x64, batch 8: 2.3-3.0 s -> 1.6-1.75 s (no YNNPACK fusion
    left in the compiled HLO); the demo model's training gradient: 240-330 -> 195-220 ms.
    XLA reads `XLA_FLAGS` when JAX initialises its backends (the first `jax.devices()`, array or
    compilation), not at `import jax` (an unknown flag set after `import jax` still aborts at
    the first `jax.devices()`; set after that, it is ignored), so setup() works after
    `import jax` but not once JAX has run anything; it logs what it did and why, or why not.
  * glibc's malloc told to keep freed memory for reuse (`keep_freed_memory`): XLA:CPU's
    per-step buffers otherwise page-fault back in every step (the demo step 45.8 -> 27.8 ms).
  * JAX's CPU computations run on the thread that calls them (`run_cpu_computations_inline`),
    so that those buffers come from the heap malloc keeps, not a worker thread's (the paper-width
    step 1.98 -> 1.53 s).
  * oneDNN's convolution kernels loaded into XLA on CPUs (`onednn.setup()`: compiled on first
    use, about 7 s; where they cannot be, it says why and XLA's own convolutions run).
  * TensorFlow kept off GPUs: it only feeds the input pipeline; JAX owns the accelerators. Only
    found here (a run without it stops at once), not imported: the modules that run TensorFlow
    import it through `import_tensorflow()`, which hides the GPUs from it where setup() asked
    for that, so that a run that stops before it builds a pipeline (a bad flag, config value or
    path) never pays TensorFlow's import (3-12 s on 2 CPU cores).
  * matplotlib's Agg backend (the CLIs only write files; no display needed).
  * open `pipeline.NumpyBatches` closed at exit: tf.data pipelines that call Python
    (`tf.numpy_function`) hang the interpreter's exit while their iterator is alive.
  * JAX's "Unable to initialize backend 'tpu'" notice hidden where no TPU library is installed,
    and Orbax's per-save INFO/WARNING chatter (its errors stay).

    from cpm_jax import runtime

    def main(argv):
        runtime.setup()
        ...

Tests call it once per session (tests/conftest.py); notebooks may call it or not (the library
draws with `matplotlib.figure.Figure`, which needs no backend).
"""
import atexit
import ctypes
import importlib.metadata
import importlib.util
import logging as std_logging
import os
import sys

from absl import logging

MISSING_TENSORFLOW = (
    "TensorFlow is not installed, and the input pipeline (tf.data) needs it: install the project "
    "with it, pip install 'cpm_jax[tf]' (tensorflow-cpu; 'cpm_jax[cpu]' on a CPU-only machine), "
    "or any TensorFlow 2 of your own (Colab has one)")
CPU_CONVOLUTION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_MEASURED_JAXLIB = "0.10."  # the flag's speed-up was measured on this series only

MALLOC_KEEP_BYTES = 1 << 30  # glibc's mmap / trim thresholds set by setup(); see keep_freed_memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt options, <malloc.h>
ASYNC_DISPATCH_VARIABLE = "JAX_CPU_ENABLE_ASYNC_DISPATCH"  # a user's choice; see run_cpu_computations_inline

_done: set[str] = set()


def setup(*, tensorflow: bool = True) -> None:
    """Prepares this process for a run; idempotent, and cheap after the first call.

    tensorflow: check that TensorFlow is installed (errors.UserError MISSING_TENSORFLOW if not;
      finding it imports nothing) and keep it off the GPUs once it is imported
      (`import_tensorflow`; now, if it already is); tools that never run TensorFlow (`summary`,
      `evaluate score`) pass False."""
    if "cpu" not in _done:  # one log line: a run that stops on a user error prints little else
        _done.add("cpu")
        notes = [prefer_eigen_cpu_convolutions(), keep_freed_memory(), run_cpu_computations_inline()]
        from cpm_jax import onednn  # imports JAX, which the flag above must not follow
        notes.append(onednn.setup())
        failed = onednn.supported_platform() and not onednn.available()  # slower than it should be
        (logging.warning if failed else logging.info)("runtime: %s", "; ".join(notes))
    if "tpu_notice" not in _done:
        _done.add("tpu_notice")
        _quiet_missing_libtpu_notice()
        std_logging.getLogger("absl").addFilter(_OrbaxChatterFilter())
    if "matplotlib" not in _done:
        _done.add("matplotlib")
        _use_agg()
    if "exit" not in _done:
        _done.add("exit")
        atexit.register(_close_open_pipelines)
    if tensorflow and "tensorflow" not in _done:
        if importlib.util.find_spec("tensorflow") is None:  # fail now, before any output is written
            from cpm_jax import errors
            raise errors.UserError(MISSING_TENSORFLOW)
        _done.add("tensorflow")
        if "tensorflow" in sys.modules:  # imported already (a notebook, a test session)
            import_tensorflow()


def import_tensorflow():
    """The `tensorflow` module, for the modules that run it (input pipeline, summaries): imported
    quietly (its C++ start-up notices, e.g. "oneDNN custom operations are on", would otherwise
    precede every message a user reads), and kept off the GPUs once `setup()` has asked for it.
    Raises errors.UserError (MISSING_TENSORFLOW) where TensorFlow is not installed."""
    tf = _import_tensorflow_quietly()
    if "tensorflow" in _done and "gpus_hidden" not in _done:
        _done.add("gpus_hidden")
        _hide_gpus_from_tensorflow(tf)
    return tf


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
    step page-faults all of its temporary memory back in, zero-filled by the kernel. Measured on
    a 2-core AMD EPYC Zen 5, the demo's training step: 14,700 -> 150 minor page faults a step,
    system time 32 -> 1.4 ms a step, median 45.8 -> 27.8 ms. The cost: memory freed by the
    process stays in it for reuse (its peak does not grow). Left alone where the user set any
    MALLOC_*_ variable, or the C library is not glibc."""
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
    come from the main heap that keep_freed_memory() keeps (up to MALLOC_KEEP_BYTES). Measured on a
    2-core AMD EPYC Zen 5, the paper-width training step (128x128, batch 8; 1.4 GB temporary):
    204,000 -> 1,000 minor page faults a step, system time 463 -> 12 ms a step, median 1.98 ->
    1.53 s; the demo's step (temporaries under 64 MiB) and `make demo` the same (25-31 ms; 97 and
    91 s). Beyond MALLOC_KEEP_BYTES (the paper model's 368x368 step: 5.7 GB) the buffers are still
    mapped anew. What it costs: Python does not prepare the next step while one runs (about a
    millisecond here). Only single-device computations: pmap across devices stays asynchronous.
    Left alone where the user set JAX_CPU_ENABLE_ASYNC_DISPATCH."""
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


class _MissingLibtpuFilter(std_logging.Filter):
    """Drops JAX's INFO record "Unable to initialize backend 'tpu': ... Failed to open libtpu.so"."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (record.levelno <= std_logging.INFO
                    and str(record.msg).startswith("Unable to initialize backend 'tpu'"))


class _OrbaxChatterFilter(std_logging.Filter):
    """Drops Orbax's INFO and WARNING records (every save, restore and read-only manager logs
    several; e.g. "CheckpointManagerOptions.read_only=True, setting save_interval_steps=0"),
    keeping its errors. cpm_jax logs what it saves and restores itself (checkpointing.py)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.ERROR or "orbax" not in record.pathname


def _quiet_missing_libtpu_notice() -> None:
    """JAX tries every backend it knows at initialisation; without libtpu the TPU attempt fails
    and `jax._src.xla_bridge` logs it at INFO, which absl prints on every run of a CLI (INFO is
    absl's default level under app.run). The filter goes on that one logger, and only where no
    TPU library is installed (no `libtpu` package, no TPU_LIBRARY_PATH): there the TPU backend
    cannot exist, so the notice says nothing. A real TPU host has libtpu, gets no filter and
    sees every message; JAX's own warning "A Google TPU may be present on this machine, but ...
    libtpu is not installed" is WARNING level and is never filtered. (JAX_PLATFORMS / the
    `jax_platforms` config would avoid the attempt instead, but it makes a listed platform's
    failure fatal and would have to name the GPU plugins of every host.)"""
    if importlib.util.find_spec("libtpu") is not None or os.environ.get("TPU_LIBRARY_PATH"):
        return
    std_logging.getLogger("jax._src.xla_bridge").addFilter(_MissingLibtpuFilter())


def _use_agg() -> None:
    """Agg for anything that draws through pyplot (this project draws on `Figure`s and needs no
    backend). matplotlib takes MPLBACKEND at import; once it is imported, `matplotlib.use`.
    A notebook's kernel keeps its own (inline) backend."""
    if "ipykernel" in sys.modules:
        return
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    else:
        os.environ["MPLBACKEND"] = "Agg"


def _close_open_pipelines() -> None:
    pipeline = sys.modules.get("data_pipelines.pipeline")
    if pipeline is not None:
        pipeline.NumpyBatches.close_all()


def _import_tensorflow_quietly():
    """`import tensorflow` with file descriptor 2 pointed at /dev/null meanwhile: TensorFlow's
    C++ code logs start-up notices to stderr before anything can configure its logging (absl's
    "All log messages before absl::InitializeLog() ..."). Python errors still raise."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    # Its C++ INFO/WARNING lines too (a failed tf.numpy_function logs ~18 of them before the
    # error the user needs, which pipeline.py re-raises as itself): TensorFlow reads the level
    # once, at import. A user's own setting wins; "1" after `import jax` is JAX's (its
    # __init__ sets it when unset) and is raised for TensorFlow, then given back for XLA.
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if level is None or (level == "1" and "jax" in sys.modules):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        tensorflow = None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
        if level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = level
    if tensorflow is None:
        from cpm_jax import errors
        raise errors.UserError(MISSING_TENSORFLOW)
    return tensorflow


def _hide_gpus_from_tensorflow(tf) -> None:
    """`tf.config.set_visible_devices([], "GPU")`, as Flax's examples and big_vision do in main.

    TensorFlow initialises its devices on first use (not at import); after that the list is
    fixed and this only warns."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as error:  # devices already initialised
        logging.warning("runtime: cannot hide GPUs from TensorFlow (%s); it may hold GPU memory", error)
