"""An exported model loaded back in its own runtime: `load(path) -> Exported`.

`path`: a .onnx file (onnxruntime), a .tflite file (LiteRT, TensorFlow Lite's runtime), a SavedModel
directory (TensorFlow; its graph holds an XlaCallModule op, so TensorFlow runs it, not TF Serving
without XLA), or the export directory itself (then model.onnx, else saved_model, else
model.tflite, whichever exists). Every file is checked against the export's model_card.json
(beside it; the SavedModel's is in its parent) before its runtime reads it: its SHA-256 (a file's
bytes; a directory's files in sorted relative-path order, `sha256_of`), and then the input shape
the runtime reports against the card's input size. Each refusal is a CheckpointError naming the
file: missing, no model card, modified or corrupt (re-export it), unreadable by its runtime, or
the wrong input shape.

`Exported.beliefs(crops uint8 (N, S, S, 3)) -> float32 (N, T, S/8, S/8, P+1)` runs any N >= 1,
from any thread (jax.pure_callback): onnxruntime and TensorFlow are thread-safe; the TFLite
interpreter is one object, so its calls take a lock (and resize it when N changes).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from typing import Callable, Iterator

import ml_collections
import numpy as np

from cpm_jax import errors, tf_loader

CARD = "model_card.json"
FILES = {"onnx": "model.onnx", "savedmodel": "saved_model", "tflite": "model.tflite"}   # in preference order
RUNTIMES = {"onnx": "onnxruntime", "savedmodel": "tensorflow", "tflite": "tflite"}
INPUT_NAME, OUTPUT_NAME = "image", "beliefs"
REEXPORT = "export it again (python -m cpm_jax.export)"


@dataclasses.dataclass
class Exported:
    """A loaded export: `path` (the file or SavedModel directory), `runtime` ("onnxruntime" |
    "tensorflow" | "tflite"), `card` (model_card.json), `config` (the training config)."""
    path: str
    runtime: str
    card: dict
    config: ml_collections.ConfigDict
    _run: Callable[[np.ndarray], np.ndarray]

    def beliefs(self, crops: np.ndarray) -> np.ndarray:
        """crops uint8 (N, S, S, 3) RGB centred on the person -> every stage's beliefs, float32
        (N, T, S/8, S/8, P+1), background last."""
        size = self.card["input_size"]
        crops = np.ascontiguousarray(crops, np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or not len(crops):
            raise errors.InputError(f"{self.path}: crops of shape {crops.shape}; expected (N, {size}, {size}, 3), "
                                    "N >= 1")
        return np.asarray(self._run(crops), np.float32)


def sha256_of(path: str) -> str:
    """The SHA-256 of a file's bytes, or of a directory: over its files in sorted relative-path
    order, each as "<relative path>\\0<bytes>\\0" then its contents."""
    digest = hashlib.sha256()
    if not os.path.isdir(path):
        _update(digest, path)
        return digest.hexdigest()
    for relative in sorted(_files_under(path)):
        full = os.path.join(path, relative)
        digest.update(f"{relative}\0{os.path.getsize(full)}\0".encode())
        _update(digest, full)
    return digest.hexdigest()


def size_of(path: str) -> int:
    """Bytes of a file, or of all files under a directory."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in _files_under(path))


def _files_under(directory: str) -> list[str]:
    return [os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            for root, _, names in os.walk(directory) for name in names]


def _update(digest, path: str) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """File descriptor 2 pointed at a temporary file meanwhile: TensorFlow Lite's C++ code prints
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once per process, whatever the log
    level. What was printed is written back to stderr if the block raises."""
    import sys
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))


def tflite_interpreter(path: str):
    """LiteRT's interpreter (`ai_edge_litert`, TensorFlow Lite's runtime as Google ships it now;
    `tf.lite.Interpreter` is deprecated) of `path` on all cores."""
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_path=path, num_threads=os.cpu_count())


def load(path: str) -> Exported:
    """The export at `path` (module docstring), checked against its model card."""
    fmt, path = _format_of(path)
    card_path = os.path.join(os.path.dirname(path), CARD)
    card = _read_card(card_path, path)
    entry = card["files"].get(fmt)
    if not isinstance(entry, dict) or "sha256" not in entry:
        raise errors.CheckpointError(f"{path}: {card_path} lists no {fmt} file (exported without it); {REEXPORT} "
                                     f"with --formats {fmt}")
    found = sha256_of(path)
    if found != entry["sha256"]:
        raise errors.CheckpointError(f"{path}: modified or corrupt: its SHA-256 {found[:16]}... is not the "
                                     f"{entry['sha256'][:16]}... of {card_path}; {REEXPORT}")
    try:
        run, shape = _OPENERS[fmt](path)
    except Exception as error:  # each runtime raises its own types; name the file whatever they are
        raise errors.CheckpointError(f"{path}: {RUNTIMES[fmt]} cannot read it ({_first_line(error)}); "
                                     f"{REEXPORT}") from error
    size = card["input_size"]
    if tuple(shape[1:]) != (size, size, 3):
        raise errors.CheckpointError(f"{path}: its input is {_shape_text(shape)}, but {card_path} says "
                                     f"(B, {size}, {size}, 3); {REEXPORT}")
    return Exported(path, RUNTIMES[fmt], card, ml_collections.ConfigDict(card["config"]), run)


def _format_of(path: str) -> tuple[str, str]:
    """(format, path of the file or SavedModel directory) that `path` names."""
    path = os.path.normpath(str(path))
    if path.endswith(".onnx") or path.endswith(".tflite"):
        if not os.path.isfile(path):
            raise errors.NoCheckpointError(f"{path}: no such file")
        return ("onnx" if path.endswith(".onnx") else "tflite"), path
    expected = "expected an exported .onnx, .tflite, SavedModel directory or export directory"
    if os.path.isfile(path):
        raise errors.CheckpointError(f"{path}: not an exported model ({expected})")
    if not os.path.isdir(path):
        raise errors.NoCheckpointError(f"{path}: no such file or directory ({expected})")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return "savedmodel", path
    if not os.path.exists(os.path.join(path, CARD)):
        raise errors.NoCheckpointError(f"{path}: not an export (no {CARD} and no saved_model.pb); {REEXPORT}")
    for fmt, name in FILES.items():
        if os.path.exists(os.path.join(path, name)):
            return fmt, os.path.join(path, name)
    raise errors.NoCheckpointError(f"{path}: holds none of {', '.join(FILES.values())}; {REEXPORT}")


def _read_card(card_path: str, path: str) -> dict:
    if not os.path.isfile(card_path):
        raise errors.CheckpointError(f"{path}: no {CARD} beside it ({card_path} does not exist); {REEXPORT}")
    try:
        with open(card_path) as f:
            card = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise errors.CheckpointError(f"{path}: cannot read {card_path}: {error}") from error
    missing = [k for k, kind in (("files", dict), ("input_size", int), ("config", dict))
               if not isinstance(card, dict) or not isinstance(card.get(k), kind)]
    if missing:
        raise errors.CheckpointError(f"{path}: {card_path} lacks a valid {', '.join(missing)} (not written by "
                                     f"python -m cpm_jax.export); {REEXPORT}")
    return card


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _shape_text(shape) -> str:
    return "(" + ", ".join("B" if d is None or isinstance(d, str) or d < 0 else str(d) for d in shape) + ")"


# ----------------------------------------------------------------------------------- runtimes
# Each opener: path -> (run(crops uint8 (N, S, S, 3)) -> beliefs, the input shape it reports).

def _open_onnx(path: str):
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (spec,) = session.get_inputs()
    if spec.name != INPUT_NAME or spec.type != "tensor(uint8)":
        raise ValueError(f"input {spec.name!r} {spec.type}; expected {INPUT_NAME!r} tensor(uint8)")
    return (lambda crops: session.run([OUTPUT_NAME], {INPUT_NAME: crops})[0]), spec.shape


def _open_savedmodel(path: str):
    tf = tf_loader.import_tensorflow()
    serve = tf.saved_model.load(path).signatures["serving_default"]
    spec = serve.structured_input_signature[1][INPUT_NAME]
    return (lambda crops: serve(**{INPUT_NAME: tf.constant(crops)})[OUTPUT_NAME].numpy()), spec.shape.as_list()


def _open_tflite(path: str):
    # The interpreter trusts the flatbuffer (a truncated one crashes the process): read it
    # through the schema in Python first, whose out-of-range reads raise instead.
    tf_loader.import_tensorflow()
    from tensorflow.lite.tools import flatbuffer_utils
    with open(path, "rb") as f:
        flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    interpreter = tflite_interpreter(path)
    (spec,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    if spec["dtype"] != np.uint8:
        raise ValueError(f"input of {spec['dtype'].__name__}; expected uint8")
    lock, batch = threading.Lock(), [None]

    def run(crops):
        with lock:
            if batch[0] != len(crops):
                interpreter.resize_tensor_input(spec["index"], list(crops.shape))
                interpreter.allocate_tensors()
                batch[0] = len(crops)
            interpreter.set_tensor(spec["index"], crops)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"]).copy()

    with quiet_native_stderr():     # its XNNPACK notice, printed at the first allocation
        interpreter.allocate_tensors()
    return run, list(spec["shape_signature"])


_OPENERS = {"onnx": _open_onnx, "savedmodel": _open_savedmodel, "tflite": _open_tflite}
