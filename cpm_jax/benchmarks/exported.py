"""The exported model in serving runtimes, timed beside JAX's forward pass (`bench --compare
onnxruntime,tensorflow,tflite`).

`ExportedPeers` exports the benchmark's parameters as `python -m cpm_jax.export` does
(cpm_jax/serving: the plain-JAX network, float32; each file checked in its runtime against JAX
before it is timed) into a temporary directory, loads each asked runtime, and offers one runner
per runtime: the batch's images as uint8 crops (B, S, S, 3) -> every stage's beliefs, with the
normalisation and the centre map inside the exported graph (JAX's `JaxInference` gets them
ready-made: the same network, a few elementwise operations apart). Each runtime uses its own
thread pool: onnxruntime and TensorFlow their defaults (one thread per core), TFLite one per core.
"""
import shutil
import tempfile
from typing import Callable

import ml_collections
import numpy as np

from cpm_jax.model import architecture

# bench's name of each runtime -> the export format it runs.
RUNTIME_FORMATS = {"onnxruntime": "onnx", "tensorflow": "savedmodel", "tflite": "tflite"}
LABELS = {"onnxruntime": "ONNX Runtime", "tensorflow": "TensorFlow (SavedModel)", "tflite": "TFLite"}


class ExportedPeers:
    """The model exported once, each runtime in `runtimes` loaded; `runners()` to time them.
    `versions` maps each runtime to its library's version (the model card's converters)."""

    def __init__(self, config: ml_collections.ConfigDict, params, batch: dict, runtimes: tuple[str, ...],
                 log: Callable[[str], None] = lambda line: None):
        from cpm_jax.serving import export
        from cpm_jax.serving import runtimes as serving_runtimes
        unknown = sorted(set(runtimes) - set(RUNTIME_FORMATS))
        if unknown:
            raise ValueError(f"unknown runtimes {unknown}; known: {', '.join(RUNTIME_FORMATS)}")
        self._directory = tempfile.mkdtemp(prefix="cpm_jax_bench_export_")
        out = f"{self._directory}/export"
        formats = tuple(f for f in export.FORMATS if f in {RUNTIME_FORMATS[r] for r in runtimes})
        try:
            card, _ = export.export(config, {"params": params}, {"bench": "the benchmark's parameters"}, None,
                                    out, formats, log=log)
            self._models = {r: serving_runtimes.load(f"{out}/{serving_runtimes.FILES[RUNTIME_FORMATS[r]]}")
                            for r in runtimes}
        except BaseException:
            self.close()
            raise
        self.versions = {r: card["converters"].get("tensorflow" if r == "tflite" else r) for r in runtimes}
        pixels = architecture.denormalise_image(np.asarray(batch["image"]))
        self._crops = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)

    def runners(self) -> dict[str, Callable[[], np.ndarray]]:
        """{"<runtime>_inference": a call predicting the batch's crops}."""
        return {f"{name}_inference": (lambda model=model: model.beliefs(self._crops))
                for name, model in self._models.items()}

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)
