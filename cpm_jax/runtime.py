"""The process set-up every entry point runs first thing in `main`: `runtime.setup()`.

Importing a module of this project changes nothing in the process (no environment variable, no
matplotlib backend, no TensorFlow device list, no exit hook, no convolution kernel). What a
command-line run needs is done here, explicitly, once:

  * the CPU backend (`cpm_jax.cpu`: process settings, oneDNN's kernels, the DFT convolutions),
    handed to `platform` so that models built on a CPU use it; on by default, off with
    CPM_JAX_CPU_BACKEND=0 (XLA's own convolutions and settings: for debugging and A/B runs);
  * TensorFlow found (a run without it stops at once) and kept off the GPUs once imported
    (`tf_loader`);
  * matplotlib's Agg backend (the CLIs only write files);
  * open `pipeline.NumpyBatches` closed at exit (tf.data pipelines that call Python hang the
    interpreter's exit while their iterator is alive);
  * JAX's "Unable to initialize backend 'tpu'" notice hidden where no TPU library is installed,
    and Orbax's per-save INFO/WARNING chatter (its errors stay).

    def main(argv):
        runtime.setup()
        ...

Tests call it once per session (tests/conftest.py); notebooks may call it or not (the library
draws with `matplotlib.figure.Figure`, which needs no backend).
"""
import atexit
import importlib.util
import logging as std_logging
import os
import sys

from absl import logging

from cpm_jax import errors, platform, tf_loader
from cpm_jax.cpu import backend as cpu_backend

CPU_BACKEND_VARIABLE = "CPM_JAX_CPU_BACKEND"  # "0": no CPU backend (XLA's convolutions and settings)

_done: set[str] = set()


def setup(*, tensorflow: bool = True) -> None:
    """Prepares this process for a run; idempotent, and cheap after the first call.

    tensorflow: check that TensorFlow is installed (errors.UserError MISSING_TENSORFLOW if not;
      finding it imports nothing) and keep it off the GPUs once it is imported; tools that never
      run TensorFlow (`summary`, `evaluate score`) pass False."""
    if "cpu" not in _done:  # one log line: a run that stops on a user error prints little else
        _done.add("cpu")
        if cpu_backend_enabled():
            backend = cpu_backend.setup()
            platform.use_cpu_convolution(backend.convolution)
            (logging.warning if backend.degraded else logging.info)("runtime: %s", "; ".join(backend.notes))
        else:
            logging.info("runtime: CPU backend off (%s=%s): XLA's own convolutions", CPU_BACKEND_VARIABLE,
                         os.environ[CPU_BACKEND_VARIABLE])
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
            raise errors.UserError(tf_loader.MISSING_TENSORFLOW)
        _done.add("tensorflow")
        tf_loader.hide_gpus_on_import()


def cpu_backend_enabled() -> bool:
    """Whether `setup()` turns the CPU backend on: unless CPM_JAX_CPU_BACKEND is "0" (or "off",
    "false", "no")."""
    return os.environ.get(CPU_BACKEND_VARIABLE, "1").strip().lower() not in ("0", "off", "false", "no")


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
