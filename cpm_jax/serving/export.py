"""A trained CPM written for serving runtimes, with its model card, and each file checked.

The network exported is `multiscale.crop_network(cpm.CPM(config.model), config)` in float32 (the
plain-JAX model: lax convolutions, never the CPU backend's kernels): crops uint8 (B, S, S, 3)
RGB centred on the person -> every stage's beliefs float32 (B, T, S/8, S/8, P+1), background
last; the normalisation (x/256 - 0.5) and the crop-centred centre map are inside; B is open.
  saved_model/  jax2tf -> TensorFlow SavedModel (an XlaCallModule op, for XLA:CPU: TensorFlow runs it)
  model.tflite  TensorFlow Lite's converter from a SavedModel of the same network whose max pools
                are one reduce-window each (`window_max_pool`: MAX_POOL_2D ops; float32 ops)
  model.onnx    tf2onnx from that TFLite model (opset 17), input "image", output "beliefs"
ONNX needs the TFLite model: when it was not asked for, it is built and dropped.
model_card.json says what the files are, how to feed them and where they come from (`build_card`).

Everything is written into a temporary directory beside `out`, loaded back in its own runtime
(`runtimes.load`: SHA-256, parse, input shape) and compared with JAX's beliefs on the first
`pretrained.CHECK_EXAMPLES` held-out crops (the evaluator's canonical crops; the synthetic
figures when the dataset cannot be read), in one batch and one by one; only when every file is
within TOLERANCE does it move into `out`. A file beyond it is a CheckpointError naming the file,
the runtime and the difference, and `out` is left as it was.
"""
import contextlib
import importlib.util
import json
import logging as std_logging
import os
import shutil
import tempfile
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from cpm_jax import errors, outputs, tf_loader
from cpm_jax.model import architecture, cpm, pooling, pretrained
from cpm_jax.serving import runtimes

FORMATS = ("savedmodel", "tflite", "onnx")
NEEDS = {"savedmodel": (), "tflite": (), "onnx": ("tflite",)}
MODULES = {"savedmodel": ("tensorflow",), "tflite": ("tensorflow",),
           "onnx": ("tensorflow", "tf2onnx", "onnx", "onnxruntime")}      # what writing and checking each needs
TOLERANCE = 1e-3          # max |beliefs - JAX's| accepted, float32
CARD_VERSION = 1
ONNX_OPSET = 17
NOTES = {"savedmodel": "signature serving_default; holds an XlaCallModule op (StableHLO for XLA:CPU): runs in "
                       "TensorFlow's runtime (tf.saved_model.load), not in runtimes without XLA",
         "tflite": "float32 built-in ops (max pools as MAX_POOL_2D); resize the input to (B, S, S, 3) before "
                   "allocate_tensors",
         "onnx": f"opset {ONNX_OPSET}; runs in onnxruntime (CPUExecutionProvider checked)"}


def parse_formats(text: str) -> tuple[str, ...]:
    """'onnx,tflite' -> ("tflite", "onnx") in FORMATS order; InputError naming an unknown one or
    a missing converter (with the pip command)."""
    names = [s.strip().lower() for s in str(text).split(",") if s.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        problem = "unknown " + ", ".join(map(repr, unknown)) if unknown else "empty"
        raise errors.InputError(f"--formats {text!r}: {problem}; choose from {','.join(FORMATS)}")
    formats = tuple(f for f in FORMATS if f in names)
    missing = sorted({m for f in formats for m in MODULES[f] if importlib.util.find_spec(m) is None})
    if missing:
        raise errors.InputError(f"--formats {','.join(formats)} needs {', '.join(missing)}, not installed: "
                                "pip install 'cpm_jax[export]' (and 'cpm_jax[cpu]' for TensorFlow)")
    return formats


def check_out(out: str, overwrite: bool) -> None:
    """OutputError unless `out` can take an export: writable, and holding no export (a model card
    or one of its files) unless `overwrite`."""
    outputs.check_directory(out, "--out")
    held = [n for n in (runtimes.CARD, *runtimes.FILES.values()) if os.path.exists(os.path.join(out, n))]
    if held and not overwrite:
        raise errors.OutputError(f"--out {out}: already holds an export ({', '.join(held)}); pass --overwrite "
                                 "to replace it, or choose another --out")


def heldout_crops(config: ml_collections.ConfigDict,
                  count: int = pretrained.CHECK_EXAMPLES) -> tuple[np.ndarray, dict]:
    """(crops uint8 (n, S, S, 3), where they come from): the first `count` canonical crops of the
    config's evaluation split (what the evaluator feeds, denormalised), or, when that split
    cannot be read, crops of the synthetic figures (centred, training's canonical zoom)."""
    from cpm_jax.evaluation import evaluators
    from data_pipelines import registry
    split = registry.eval_split(config.data)
    try:
        registry.check_files(config.data, [split])
        parts = list(evaluators.canonical_crops(config, split, count))
        if parts:
            images = np.concatenate([p["image"] for p in parts])[:count]
            crops = np.clip(np.rint(architecture.denormalise_image(images)), 0, 255).astype(np.uint8)
            return crops, {"source": "heldout", "dataset": config.data.dataset, "split": split, "count": len(crops)}
        reason = f"split {split!r} is empty"
    except (errors.ConfigError, errors.DataError) as error:
        reason = str(error).splitlines()[0]
    return _synthetic_crops(config, count), {"source": "synthetic", "dataset": config.data.dataset, "split": split,
                                             "count": count, "reason": reason}


def _synthetic_crops(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
    from cpm_jax.evaluation import multiscale
    from data_pipelines import synthetic
    size, data = config.model.input_size, config.data
    crops = []
    for i in range(count):
        example = synthetic.render_example(int(data.get("synthetic_seed", 0)), "heldout", i,
                                           int(data.get("synthetic_image_size", 160)))
        person = multiscale.person_from_scale(example["center"], float(example["scale"]), data, size)
        crops.append(multiscale.prepare(example["image"], person, (1.0,), size).crops[0])
    return np.stack(crops)


def crops_text(crops: dict, detail: bool = False) -> str:
    """'8 held-out crops' or '8 synthetic-figure crops (lspet 'heldout' unreadable)'; with
    `detail`, the split ('... of lspet 'heldout'') or why it could not be read."""
    if crops["source"] == "heldout":
        return f"{crops['count']} held-out crops" + (f" of {crops['dataset']} {crops['split']!r}" if detail else "")
    return (f"{crops['count']} synthetic-figure crops ({crops['dataset']} {crops['split']!r} unreadable"
            + (f": {crops['reason']})" if detail else ")"))


def network(config: ml_collections.ConfigDict, pool: cpm.Pooling = pooling.caffe_max_pool) -> Callable:
    """The exported function, `apply(variables, crops uint8 (B, S, S, 3)) -> beliefs`, float32,
    its max pools computed by `pool` (the same values either way)."""
    from cpm_jax.evaluation import multiscale
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    model_config.dtype = "float32"
    return multiscale.crop_network(cpm.CPM(model_config, pool=pool), config)


def export(config: ml_collections.ConfigDict, variables: dict, source: dict, heldout, out: str,
           formats=FORMATS, overwrite: bool = False, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Writes `formats` and model_card.json into `out` (module docstring); returns (the card,
    seconds per format). `source`, `heldout`: the card's fields. `log`: one line per stage."""
    check_out(out, overwrite)
    started = time.perf_counter()
    parent = os.path.dirname(os.path.abspath(out))
    made = _first_missing(parent)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.partial-", dir=parent)
    try:
        os.chmod(work, 0o777 & ~_umask())       # as os.makedirs would make `out` (mkdtemp: 0o700)
        with _tensorflow_info_hidden():
            card, seconds = _export_into(work, config, variables, source, heldout, out, formats, log)
        _install(work, out, formats)
    except BaseException:
        shutil.rmtree(made or work, ignore_errors=True)
        raise
    log(f"export: {len(formats)} format(s) checked and moved into {out} in {time.perf_counter() - started:.1f} s")
    return card, seconds


def _export_into(work, config, variables, source, heldout, out, formats, log) -> tuple[dict, dict]:
    tick = time.perf_counter()
    crops, crop_info = heldout_crops(config)
    variables = jax.tree.map(lambda v: np.asarray(v, np.float32), jax.device_get(variables))
    with jax.default_device(jax.devices("cpu")[0]):    # where the runtimes run: no TF32 of a GPU
        reference = np.asarray(jax.jit(network(config))(variables, crops))
    log(f"export: {crops_text(crop_info, detail=True)} and JAX's beliefs on them "
        f"in {time.perf_counter() - tick:.1f} s")
    paths = {f: os.path.join(work, runtimes.FILES[f]) for f in FORMATS}
    writers = {"savedmodel": lambda: write_savedmodel(config, variables, paths["savedmodel"]),
               "tflite": lambda: write_tflite(config, variables, paths["tflite"]),
               "onnx": lambda: write_onnx(paths["tflite"], paths["onnx"])}
    seconds = {}
    for fmt in FORMATS:
        if fmt in formats or any(fmt in NEEDS[f] for f in formats):
            tick = time.perf_counter()
            with outputs.writing(paths[fmt]):
                writers[fmt]()
            seconds[fmt] = time.perf_counter() - tick
            users = ", ".join(f for f in formats if fmt in NEEDS[f])
            kept = "" if fmt in formats else f" (needed by {users}; not kept)"
            log(f"export: {fmt} written in {seconds[fmt]:.1f} s{kept}")
    for fmt in FORMATS:
        if fmt not in formats and os.path.exists(paths[fmt]):
            shutil.rmtree(paths[fmt]) if os.path.isdir(paths[fmt]) else os.remove(paths[fmt])
    card = build_card(config, source, heldout, {f: paths[f] for f in formats}, crop_info)
    write_card(card, work)
    for fmt in formats:
        tick = time.perf_counter()
        exported = runtimes.load(paths[fmt])
        differences = [np.max(np.abs(exported.beliefs(crops[:n]) - reference[:n])) for n in (len(crops), 1)]
        difference = float(np.max(differences))           # NaN if any is
        final = os.path.join(out, runtimes.FILES[fmt])
        if not difference <= TOLERANCE:
            raise errors.CheckpointError(
                f"{final}: {exported.runtime}'s beliefs differ from JAX's by {difference:.3g} (> {TOLERANCE:g}) on "
                f"{crops_text(crop_info)}; nothing was written to {out}")
        card["checks"]["formats"][fmt] = {"runtime": exported.runtime, "max_abs_difference": difference,
                                          "batch_sizes": [len(crops), 1]}
        log(f"export: {fmt} loaded back in {exported.runtime} and compared in {time.perf_counter() - tick:.1f} s")
    write_card(card, work)
    return card, seconds


def result_lines(card: dict, out: str, seconds: dict) -> list[str]:
    """One line per format: file, size, time, runtime, crops and the difference from JAX."""
    lines = []
    for fmt, check in card["checks"]["formats"].items():
        entry = card["files"][fmt]
        lines.append(f"export: {fmt} -> {os.path.join(out, entry['path'])} ({_size_text(entry['bytes'])}, "
                     f"{seconds.get(fmt, 0.0):.1f} s); {check['runtime']} on {crops_text(card['checks']['crops'])}: "
                     f"max |beliefs - JAX| {check['max_abs_difference']:.1e}")
    return lines


def _size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def build_card(config: ml_collections.ConfigDict, source: dict, heldout, files: dict, crops: dict) -> dict:
    """model_card.json's contents; `files`: format -> path of the written file (or directory);
    "checks" filled in as each file passes."""
    from cpm_jax.evaluation import multiscale
    from data_pipelines import registry, targets
    m, data = config.model, config.data
    size, cells = m.input_size, m.input_size // architecture.STRIDE
    skeleton = registry.get(data.dataset).skeleton
    sigma = data.get("center_sigma", targets.CENTER_SIGMA_PX)
    return {
        "format": "cpm_jax export", "format_version": CARD_VERSION,
        "files": {f: {"path": os.path.basename(p), "bytes": runtimes.size_of(p), "sha256": runtimes.sha256_of(p),
                      "runtime": runtimes.RUNTIMES[f], "note": NOTES[f]} for f, p in files.items()},
        "sha256_rule": "a file: SHA-256 of its bytes; a directory: over its files in sorted relative-path order, "
                       "each as '<relative path>\\0<bytes>\\0' then its contents",
        "input": {"name": runtimes.INPUT_NAME, "dtype": "uint8", "shape": ["B", size, size, 3],
                  "layout": "NHWC, RGB",
                  "meaning": "a crop centred on the person: the network's centre map is the crop's centre"},
        "output": {"name": runtimes.OUTPUT_NAME, "dtype": "float32",
                   "shape": ["B", m.num_stages, cells, cells, m.num_parts + 1],
                   "meaning": "every stage's belief maps (the last stage is the answer), one channel per joint in "
                              "skeleton.joint_names order, background last; cell g is centred on crop pixel "
                              "8 g + 3.5"},
        "input_size": size, "num_stages": m.num_stages, "num_parts": m.num_parts, "stride": architecture.STRIDE,
        "normalisation": "inside the model: x / 256 - 0.5 of the uint8 pixels",
        "center_map": f"inside the model: a Gaussian (sigma {sigma:g} px) at the crop's centre",
        "cropping": {
            "zoom": f"f = person_height x S / person scale in px = {data.person_height:.6g} x {size} / scale "
                    "(scale: about the person's height in px); the S x S crop is centred on the person, "
                    "bicubic, grey (128) outside the image; crop px q <-> image px c + (q - (S - 1) / 2) / f",
            "whole_photo": f"the LSP rule: centre = the image centre, f = {multiscale.LSP_HEIGHT_FRACTION:g} x "
                           f"{size} / image height",
            "see": "README.md, 'Video, and the model outside cpm_jax' (python -m cpm_jax.predict --model "
                   "runs an export as the JAX model runs)"},
        "skeleton": {"dataset": data.dataset, "joint_names": list(skeleton.joint_names),
                     "limbs": [list(limb) for limb in skeleton.limbs],
                     "flip_permutation": list(skeleton.flip_permutation)},
        "config": json.loads(config.to_json_best_effort()),
        "heldout": heldout, "source": source, "converters": converters(),
        "checks": {"crops": crops, "tolerance": TOLERANCE, "reference": "JAX on the CPU (jax.jit of the same "
                   "network)", "formats": {}},
    }


def write_card(card: dict, directory: str) -> None:
    with open(os.path.join(directory, runtimes.CARD), "w") as f:
        json.dump(card, f, indent=1)


def converters() -> dict:
    """Installed versions of what wrote and checked the files (None: not installed)."""
    from importlib import metadata
    found = {}
    for name, dists in (("jax", ("jax",)), ("tensorflow", ("tensorflow", "tensorflow-cpu")),
                        ("tf2onnx", ("tf2onnx",)), ("onnx", ("onnx",)),
                        ("onnxruntime", ("onnxruntime", "onnxruntime-gpu"))):
        found[name] = None
        for dist in dists:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


# ---------------------------------------------------------------------------------- converters

def write_savedmodel(config: ml_collections.ConfigDict, variables: dict, path: str,
                     pool: cpm.Pooling = pooling.caffe_max_pool) -> None:
    """jax2tf of `network(config, pool)` with `variables` as constants, for XLA:CPU, batch
    polymorphic; signature "serving_default": image uint8 (None, S, S, 3) -> {"beliefs": float32}."""
    tf = tf_loader.import_tensorflow()
    from jax.experimental import jax2tf
    size, apply = config.model.input_size, network(config, pool)
    converted = jax2tf.convert(lambda crops: apply(variables, crops), polymorphic_shapes=[f"(b, {size}, {size}, 3)"],
                               with_gradient=False, native_serialization_platforms=("cpu",))
    module = tf.Module()

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8,
                                                                 name=runtimes.INPUT_NAME)])
    def serve(image):
        return {runtimes.OUTPUT_NAME: converted(image)}

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def write_tflite(config: ml_collections.ConfigDict, variables: dict, path: str) -> None:
    """TensorFlow Lite's converter from a SavedModel of the network with `window_max_pool`, written
    beside `path` and removed: float32, batch left open (-1). Its pools become MAX_POOL_2D ops
    (tf2onnx: MaxPool), 1.7-1.9x faster there than the SavedModel's strided slices, which XLA:CPU
    runs faster instead (docs/performance.md)."""
    tf = tf_loader.import_tensorflow()
    source = path + ".saved_model"
    try:
        write_savedmodel(config, variables, source, pool=pooling.window_max_pool)
        model = tf.lite.TFLiteConverter.from_saved_model(source).convert()
    finally:
        shutil.rmtree(source, ignore_errors=True)
    with open(path, "wb") as f:
        f.write(model)


def write_onnx(tflite: str, path: str) -> None:
    """tf2onnx from the TFLite model (opset ONNX_OPSET); the graph's input renamed "image", its
    output "beliefs", their batch dimension "batch"; checked by onnx's checker."""
    tf_loader.import_tensorflow()
    import onnx
    import tf2onnx
    with runtimes.quiet_native_stderr():     # tf2onnx reads the model with a TFLite interpreter
        model, _ = tf2onnx.convert.from_tflite(tflite, opset=ONNX_OPSET)
    graph = model.graph
    for value, name in ((graph.input[0], runtimes.INPUT_NAME), (graph.output[0], runtimes.OUTPUT_NAME)):
        old, value.name = value.name, name
        for node in graph.node:
            node.input[:] = [name if n == old else n for n in node.input]
            node.output[:] = [name if n == old else n for n in node.output]
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, path)


# ------------------------------------------------------------------------------------ placing

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _tensorflow_info_hidden():
    """TensorFlow's INFO lines while it saves and converts ("Assets written to", "Writing
    fingerprint", ...: absl's and the "tensorflow" logger's), unless -v asked for debug lines."""
    from absl import logging as absl_logging
    tf_logger, verbosity = std_logging.getLogger("tensorflow"), absl_logging.get_verbosity()
    level = tf_logger.level
    if verbosity <= absl_logging.INFO:
        absl_logging.set_verbosity(absl_logging.WARNING)
        tf_logger.setLevel(std_logging.WARNING)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)
        tf_logger.setLevel(level)


def _first_missing(directory: str) -> str | None:
    """The outermost missing directory on the way to `directory` (None if it exists): removed
    again if the export fails, so that a failure leaves nothing behind."""
    missing = None
    while not os.path.exists(directory) and os.path.dirname(directory) != directory:
        missing, directory = directory, os.path.dirname(directory)
    return missing


def _install(work: str, out: str, formats) -> None:
    """Moves the checked export into `out`: the whole directory when `out` does not exist; else
    the old card first (a half-replaced export is then no export), every old export file, then
    the new files and the card last."""
    if not os.path.exists(out):
        os.replace(work, out)
        return
    for name in (runtimes.CARD, *runtimes.FILES.values()):
        old = os.path.join(out, name)
        if os.path.isdir(old):
            shutil.rmtree(old)
        elif os.path.exists(old):
            os.remove(old)
    for name in [runtimes.FILES[f] for f in formats] + [runtimes.CARD]:
        os.replace(os.path.join(work, name), os.path.join(out, name))
    os.rmdir(work)
