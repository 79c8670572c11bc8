"""Random access to one split of a dataset: `source.size` examples, `source.load(i)` -> record.

A record is a dict of numpy arrays: `image` uint8 (H, W, 3) RGB plus the fields of
`records.Annotations.row` (joints, visibility, center, scale, others_*, head_box). Raw files and
TFDS builds decode and check examples the same way (`decode_image`, `records.check_record`): a
bad example raises BadExampleError naming its file and index or, with `skip_bad_examples`, is
skipped (`load` returns None), counted, and reported once per epoch by `BadExampleLog`. Problems
of a whole split (its annotation file) are DataErrors raised by the readers, never skipped.
"""
import io
import os
import threading
from typing import Callable, Optional

import numpy as np
from absl import logging
from PIL import Image

from cpm_jax.errors import BadExampleError, DataError
from data_pipelines import matfile, records, synthetic


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded JPEG or PNG -> uint8 (H, W, 3) RGB, by content, not by file name.

    Grayscale, palette, CMYK and alpha images are converted to RGB, as OpenCV's imread does in
    the release; 16-bit images keep their top 8 bits (as imread). A file that is not an image
    ("not a JPEG or PNG image"), or a truncated or undecodable one, raises BadExampleError
    naming `where`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes everything: a truncated JPEG raises here
            if image.mode.startswith("I"):  # 16-bit grayscale (PIL's "I;16" or "I")
                image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
            return np.asarray(image.convert("RGB"))
    except Image.UnidentifiedImageError as error:     # PIL names a BytesIO object: say what it is
        kind = matfile.describe_content(data[:128])
        if kind in ("a JPEG image", "a PNG image"):
            raise BadExampleError(f"{where}: cannot decode the image: it begins as {kind} but is "
                                  "damaged") from error
        raise BadExampleError(f"{where}: not a JPEG or PNG image (it is {kind})") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadExampleError(f"{where}: cannot decode the image: {error}") from error


class BadExampleLog:
    """Thread-safe count of skipped examples, reported every `epoch_size` loads (an epoch)."""

    def __init__(self, name: str, epoch_size: Optional[int], shown: int = 5):
        self.name, self.epoch_size, self.shown = name, epoch_size, shown
        self._lock = threading.Lock()
        self._loads, self._bad, self.total_skipped = 0, [], 0

    def count(self, error: Optional[BadExampleError] = None) -> None:
        with self._lock:
            self._loads += 1
            if error is not None:
                self._bad.append(str(error))
                self.total_skipped += 1
            if self.epoch_size and self._loads % self.epoch_size == 0:
                self._report()

    def _report(self) -> None:
        if self._bad:
            logging.warning("%s: skipped %d bad examples in the last epoch of %d; the first: %s",
                            self.name, len(self._bad), self.epoch_size, "; ".join(self._bad[:self.shown]))
        self._bad = []


class Source:
    """A split whose examples are fetched by index. `fetch(i)` -> (encoded image bytes, row)."""

    def __init__(self, name: str, size: int, fetch: Callable[[int], tuple[bytes, dict]],
                 describe: Callable[[int], str], num_parts: int, skip_bad_examples: bool = False):
        self.name, self.size, self.num_parts = name, size, num_parts
        self._fetch, self._describe, self.skip_bad_examples = fetch, describe, skip_bad_examples
        self.bad_examples = BadExampleLog(name, size)

    def load(self, index: int) -> Optional[dict]:
        """Record `index`, or None if it is bad and bad examples are skipped."""
        where = self._describe(index)
        try:
            data, row = self._fetch(index)
            record = {"image": decode_image(data, where), **row}
            records.check_record(record, where)
        except BadExampleError as error:
            if not self.skip_bad_examples:
                raise
            self.bad_examples.count(error)
            return None
        self.bad_examples.count()
        return record


def from_annotations(ann: records.Annotations, skip_bad_examples: bool = False) -> Source:
    """Images read from the files `ann.image_paths`."""
    def fetch(index: int):
        path = ann.image_paths[index]
        if os.path.isdir(path):
            raise BadExampleError(f"{ann.describe(index)}: {path} is a directory, not an image file")
        try:
            with open(path, "rb") as f:
                return f.read(), ann.row(index)
        except OSError as error:
            raise BadExampleError(f"{ann.describe(index)}: cannot read {path}: {error.strerror}") from error

    return Source(ann.dataset, len(ann), fetch, ann.describe, ann.num_parts, skip_bad_examples)


def concatenate(parts: list[Source]) -> Source:
    """The examples of `parts` one after the other (e.g. LSPET then LSP 1-1000)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.size for p in parts])

    def locate(index: int) -> tuple[Source, int]:
        k = int(np.searchsorted(offsets, index, side="right")) - 1
        return parts[k], index - int(offsets[k])

    def fetch(index):
        part, i = locate(index)
        return part._fetch(i)

    def describe(index):
        part, i = locate(index)
        return part._describe(i)

    return Source("+".join(p.name for p in parts), int(offsets[-1]), fetch, describe, parts[0].num_parts,
                  parts[0].skip_bad_examples)


class SyntheticSource:
    """The procedural figures (synthetic.py): endless (size None), rendered from the index."""

    def __init__(self, seed: int, split: str, image_size: int):
        if split not in synthetic.SPLITS:
            raise DataError(f"synthetic dataset: unknown split {split!r}; known: {', '.join(synthetic.SPLITS)}")
        self.name, self.size, self.num_parts = f"synthetic/{split}", None, synthetic.NUM_JOINTS
        self._seed, self._split, self._image_size = seed, split, image_size

    def load(self, index: int) -> dict:
        record = synthetic.render_example(self._seed, self._split, index, self._image_size)
        record["others_joints"] = np.zeros((0, self.num_parts, 2), np.float32)
        record["others_visibility"] = np.zeros((0, self.num_parts), np.int32)
        record["head_box"] = records.no_head_boxes(1)[0]
        return record
