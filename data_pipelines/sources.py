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
    """Skipped examples of a stream, counted per epoch of stream positions, thread-safe.

    An epoch is `epoch_size` consecutive stream positions (the first epoch of a stream started
    at position `start` mid-epoch is the rest of that epoch). Loader threads count each position
    once, in whatever order they finish, and the thread that completes an epoch reports it: one
    warning per epoch with skips, however many loader threads and prefetched epochs there are.
    Loads without a position (direct `Source.load(i)` calls) take the next position in the order
    they are counted.

    The run stops (a DataError raised by the load that decides it, which the pipeline hands to
    its consumer) when an epoch has no usable example, or when more than `max_fraction` of an
    epoch's positions are bad: as soon as the count passes the bound, without waiting for the
    epoch's end. `max_fraction` None: no bound (only the "no usable examples" rule).
    `total_skipped` counts every skip of the log's life, `skipped` keeps the first KEPT messages."""

    KEPT = 20

    def __init__(self, name: str, epoch_size: Optional[int], shown: int = 5):
        self.name, self.epoch_size, self.shown = name, epoch_size, shown
        self.start, self.max_fraction, self.where = 0, None, name
        self._lock = threading.Lock()
        self._epochs: dict[int, list] = {}       # epoch -> [loads, bad, first messages]
        self._next_position, self.total_skipped = 0, 0
        self.skipped: list[str] = []             # the messages of the first KEPT skipped examples
        self._failure: Optional[DataError] = None   # once raised, the stream is over: no more reports

    def configure(self, epoch_size: Optional[int], start: int = 0, max_fraction: Optional[float] = None,
                  where: Optional[str] = None) -> None:
        """Set by the pipeline for its stream: epoch length, first position, bound, and how the
        messages name the data (e.g. "lspet train (images in /data/lspet/images)")."""
        with self._lock:
            self.epoch_size, self.start, self.max_fraction = epoch_size, start, max_fraction
            self.where = where or self.name
            self._epochs, self._next_position, self._failure = {}, start, None

    def count(self, error: Optional[BadExampleError] = None, position: Optional[int] = None) -> None:
        """Counts one load at stream `position` (default: the next one), bad if `error`; raises
        DataError when the stream must stop (see the class docstring)."""
        with self._lock:
            if position is None:
                position, self._next_position = self._next_position, self._next_position + 1
            if error is not None:
                self.total_skipped += 1
                if len(self.skipped) < self.KEPT:
                    self.skipped.append(str(error))
            if self._failure is not None:          # loads still in flight after the stop
                if error is not None:
                    raise DataError(str(self._failure))
                return
            if not self.epoch_size:
                return
            epoch = position // self.epoch_size
            expected = self.epoch_size - (self.start % self.epoch_size if epoch == self.start // self.epoch_size else 0)
            state = self._epochs.setdefault(epoch, [0, 0, []])
            state[0] += 1
            if error is not None:
                state[1] += 1
                if len(state[2]) < self.shown:
                    state[2].append(str(error))
            loads, bad, first = state
            if error is not None:
                self._failure = self._verdict(loads, bad, expected, "; ".join(first))
                if self._failure is not None:
                    raise self._failure
            if loads >= expected:
                del self._epochs[epoch]
                if bad:
                    logging.warning("%s: skipped %d bad examples in the last epoch of %d; the first: %s",
                                    self.where, bad, expected, "; ".join(first))

    def _verdict(self, loads: int, bad: int, expected: int, first: str) -> Optional[DataError]:
        """The DataError that stops the stream after this count of an epoch, or None."""
        if bad == loads == expected:
            return DataError(f"{self.where}: no usable examples: all {expected} examples of an epoch are bad "
                             f"(check the folder and its files). The first: {first}")
        if self.max_fraction is None or bad <= self.max_fraction * expected:
            return None
        bound = f"more than config.data.max_skipped_fraction = {self.max_fraction:g} of an epoch of {expected}"
        if bad == loads:
            return DataError(f"{self.where}: no usable examples: all {loads} read so far are bad, {bound} "
                             f"(check the folder and its files). The first: {first}")
        return DataError(f"{self.where}: {bad} of the {loads} examples read so far are bad, {bound}; fix or "
                         f"remove them, or raise data.max_skipped_fraction. The first: {first}")


class Source:
    """A split whose examples are fetched by index. `fetch(i)` -> (encoded image bytes, row).

    `where` names the data in the messages about skipped examples (default `name`)."""

    def __init__(self, name: str, size: int, fetch: Callable[[int], tuple[bytes, dict]],
                 describe: Callable[[int], str], num_parts: int, skip_bad_examples: bool = False,
                 where: str = ""):
        self.name, self.size, self.num_parts = name, size, num_parts
        self._fetch, self._describe, self.skip_bad_examples = fetch, describe, skip_bad_examples
        self.where = where or name
        self.bad_examples = BadExampleLog(self.where, size)

    def load(self, index: int, position: Optional[int] = None) -> Optional[dict]:
        """Record `index`, or None if it is bad and bad examples are skipped. `position`: its
        stream position (epochs of the skip count, see BadExampleLog); default the next."""
        where = self._describe(index)
        try:
            data, row = self._fetch(index)
            record = {"image": decode_image(data, where), **row}
            records.check_record(record, where)
        except BadExampleError as error:
            if not self.skip_bad_examples:
                raise
            self.bad_examples.count(error, position)
            return None
        if self.skip_bad_examples:
            self.bad_examples.count(None, position)
        return record


def _folders(paths) -> str:
    """`images in /data/lspet/images` (the folders of `paths`, at most two named)."""
    folders = list(dict.fromkeys(os.path.dirname(str(p)) for p in paths))
    if not folders:
        return "no images"
    shown = " and ".join(folders[:2]) + (f" and {len(folders) - 2} more folders" if len(folders) > 2 else "")
    return f"images in {shown}"


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

    return Source(ann.dataset, len(ann), fetch, ann.describe, ann.num_parts, skip_bad_examples,
                  where=f"{ann.dataset} ({_folders(ann.image_paths)})")


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

    name = "+".join(p.name for p in parts)
    return Source(name, int(offsets[-1]), fetch, describe, parts[0].num_parts, parts[0].skip_bad_examples,
                  where=" + ".join(p.where for p in parts))


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
