"""TensorFlow, imported only where it runs (the input pipeline, TensorBoard summaries), quietly,
and kept off the GPUs once `runtime.setup()` has asked for that (`hide_gpus_on_import`): it only
feeds the input pipeline; JAX owns the accelerators. A run that stops before it builds a pipeline
(a bad flag, config value or path) never pays TensorFlow's import.
"""
import os
import sys

from absl import logging

from cpm_jax import errors

MISSING_TENSORFLOW = (
    "TensorFlow is not installed, and the input pipeline (tf.data) needs it: install the project "
    "with it, pip install 'cpm_jax[tf]' (tensorflow-cpu; 'cpm_jax[cpu]' on a CPU-only machine), "
    "or any TensorFlow 2 of your own (Colab has one)")

_hide_gpus = False
_gpus_hidden = False


def hide_gpus_on_import() -> None:
    """Keeps TensorFlow off the GPUs from its import on (now, if it is imported already)."""
    global _hide_gpus
    _hide_gpus = True
    if "tensorflow" in sys.modules:
        import_tensorflow()


def import_tensorflow():
    """The `tensorflow` module, for the modules that run it (input pipeline, summaries): imported
    quietly (its C++ start-up notices, e.g. "oneDNN custom operations are on", would otherwise
    precede every message a user reads), and kept off the GPUs once `runtime.setup()` has asked for it (`hide_gpus_on_import`).
    Raises errors.UserError (MISSING_TENSORFLOW) where TensorFlow is not installed."""
    global _gpus_hidden
    tf = _import_tensorflow_quietly()
    if _hide_gpus and not _gpus_hidden:
        _gpus_hidden = True
        _hide_gpus_from_tensorflow(tf)
    return tf


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
        raise errors.UserError(MISSING_TENSORFLOW)
    return tensorflow


def _hide_gpus_from_tensorflow(tf) -> None:
    """`tf.config.set_visible_devices([], "GPU")`, as Flax's examples and big_vision do in main.

    TensorFlow initialises its devices on first use (not at import); after that the list is
    fixed and this only warns."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as error:  # devices already initialised
        logging.warning("cannot hide GPUs from TensorFlow (%s); it may hold GPU memory", error)
