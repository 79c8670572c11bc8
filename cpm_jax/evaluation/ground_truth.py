"""The scored examples of an official annotation file, for `evaluate score`: `load_annotations`.

Each benchmark's file gives a `GroundTruth` in the project's joint order and 0-based pixels:

  lsp   `joints.mat` of LSP (3 x 14 x 2000): split test (default: images 1001-2000) or train
        (1-1000); every joint counts.
  flic  `examples.mat`: split test (default: the istest examples, file order) or train (istrain;
        the file's labels, not swapped as for training); the labelled parts count.
  mpii  a .mat whose `annolist` follows the official structure; the labelled joints count, each
        person's head box is the PCKh normaliser:
        - the full release (`RELEASE`): split valid with Tompson et al.'s detections.mat (its
          people, in its order) or split train (every annotated person of the training images,
          less the validation people when that file is given);
        - a one-person-per-entry file (a top-level `annolist`, one `annorect` per entry, e.g. the
          2,958-person validation split): its entries in order (split entries, the default for
          such a file; also forces this reading of a RELEASE).

The files are read by the training readers' public functions (`lsp.read_joints`,
`flic.load_examples`, `mpii.select_people`, `mpii.read_entries`). A file that cannot be read or
has the wrong layout is a `DataError`; annotations that cannot be scored (no head box, a missing
torso joint, a split or option that does not apply) an `AnnotationError`; both name the file.
"""
import dataclasses
import os

import numpy as np

from cpm_jax.errors import AnnotationError
from cpm_jax.evaluation import metrics
from data_pipelines import flic, lsp, matfile, mpii, skeleton

# Benchmark -> its splits, the default first.
SPLITS = {"lsp": ("test", "train"), "flic": ("test", "train"), "mpii": ("valid", "train", "entries")}
LSP_SIZE = 2000


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """The scored examples of an annotation file, in the project's joint order, 0-based pixels."""
    benchmark: str                  # lsp, flic, mpii
    path: str
    split: str | None               # None: the file's own list of people (mpii entries)
    description: str                # what is scored, in words
    joints: np.ndarray              # (N, P, 2)
    counted: np.ndarray             # (N, P) bool: the joints that count
    head_boxes: np.ndarray | None   # (N, 4) x1 y1 x2 y2 (mpii; NaN where absent)
    where: tuple[str, ...]          # (N,) each example in the file's own notation

    def __len__(self) -> int:
        return len(self.joints)

    def take(self, rows: np.ndarray) -> "GroundTruth":
        return dataclasses.replace(
            self, joints=self.joints[rows], counted=self.counted[rows],
            head_boxes=None if self.head_boxes is None else self.head_boxes[rows],
            where=tuple(self.where[r] for r in rows),
            description=f"{self.description}; {len(rows)} of {len(self)} examples")


def load_lsp(path: str, split: str = "test") -> GroundTruth:
    """LSP `joints.mat` (3 x 14 x 2000, 1-based): the test (1001-2000) or train (1-1000) images."""
    _, joints = lsp.read_joints(path, "lsp", fix="the LSP benchmark's annotations are LSP's "
                                "joints.mat, 3 x 14 x 2000")
    if len(joints) != LSP_SIZE:
        raise AnnotationError(f"{path}: 'joints' is 3 x 14 x {len(joints)}; LSP's joints.mat is "
                              f"3 x 14 x {LSP_SIZE} (images 1-1000 train, 1001-2000 test)")
    rows = {"test": lsp.LSP_TEST, "train": lsp.LSP_TRAIN}[split]
    joints = joints[rows.start:rows.stop, :, :2] - 1.0
    bad = ~np.isfinite(joints).all(-1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise AnnotationError(f"{path}: image {rows.start + i + 1} joint {skeleton.LSP.joint_names[j]} "
                              "is not a number; LSP labels every joint")
    return GroundTruth("lsp", path, split, f"LSP {split} images {rows.start + 1}-{rows.stop}", joints,
                       np.ones(joints.shape[:2], bool), None,
                       tuple(f"image {i + 1}" for i in rows))


def load_flic(path: str, split: str = "test") -> GroundTruth:
    """FLIC `examples.mat`: the istest (or istrain) examples in file order, the file's labels."""
    examples = flic.load_examples(path)
    chosen = [i for i, e in enumerate(examples) if (e.istest if split == "test" else e.istrain)]
    if not chosen:
        raise AnnotationError(f"{path}: no example has is{split} set")
    joints = np.zeros((len(chosen), flic.NUM_JOINTS, 2))
    counted = np.zeros((len(chosen), flic.NUM_JOINTS), bool)
    for row, i in enumerate(chosen):
        joints[row], visibility = flic.labels(examples[i].coords, swap=False)
        counted[row] = visibility > 0
    scored = [flic.JOINT_INDEX[n] for n in metrics.BENCHMARKS["flic"].scored]
    torso = list(skeleton.FLIC.torso_indices)
    missing = counted[:, scored].any(1) & ~counted[:, torso].all(1)
    if missing.any():
        raise AnnotationError(f"{path}: examples({chosen[int(np.argmax(missing))] + 1}) has no "
                              f"ground-truth {' or '.join(skeleton.FLIC.torso)}, the PCK normaliser "
                              f"({missing.sum()} such examples)")
    return GroundTruth("flic", path, split, f"FLIC {split} examples (is{split}, file order)", joints,
                       counted, None, tuple(f"examples({i + 1})" for i in chosen))


def _mpii_truth(path: str, split: str | None, description: str, people: list) -> GroundTruth:
    """people: mpii.Person or None (an entry without annotated joints), in scoring order."""
    n = len(people)
    joints = np.zeros((n, skeleton.NUM_JOINTS, 2))
    counted = np.zeros((n, skeleton.NUM_JOINTS), bool)
    boxes = np.full((n, 4), np.nan)
    where = []
    for row, person in enumerate(people):
        if person is None:
            where.append(f"annolist({row + 1})")
            continue
        where.append(person.where)
        joints[row] = person.joints
        counted[row] = person.visibility > 0
        boxes[row] = person.head_box
        if counted[row].any() and not np.isfinite(person.head_box).all():
            raise AnnotationError(f"{path}: {person.where} has annotated joints but no head box "
                                  "(x1 y1 x2 y2), the PCKh normaliser")
    return GroundTruth("mpii", path, split, description, joints, counted, boxes, tuple(where))


def load_mpii(path: str, split: str | None = None, validation_file: str | None = None) -> GroundTruth:
    """MPII people from a release-structured .mat (see the module docstring for the two kinds)."""
    variables = matfile.variables(path)
    if "RELEASE" not in variables:
        if "annolist" not in variables:
            raise AnnotationError(f"{path}: neither 'RELEASE' nor 'annolist' (found: "
                                  f"{', '.join(variables) or 'nothing'}); not MPII annotations")
        if split not in (None, "entries"):
            raise AnnotationError(f"{path}: a one-person-per-entry file (top-level 'annolist') lists "
                                  f"its own people; --split {split} applies to the full release")
    if split == "entries" or "RELEASE" not in variables:
        people = mpii.read_entries(path)
        return _mpii_truth(path, None, f"MPII: the {len(people)} annolist entries, one person each",
                           people)
    if split is None:
        if validation_file is None:
            raise AnnotationError(f"{path}: the full MPII release: choose the people with --split "
                                  "valid (and --mpii_validation) or --split train")
        split = "valid"
    if split == "valid" and validation_file is None:
        raise AnnotationError(f"{path}: --split valid needs --mpii_validation (Tompson et al.'s "
                              "detections.mat with RELEASE_img_index and RELEASE_person_index)")
    _, chosen = mpii.select_people(path, split, validation_file)
    if split == "train":
        description = "MPII training people" + (" less the validation people" if validation_file else "")
    else:
        description = f"MPII validation people of {os.path.basename(validation_file)}"
    if not chosen:
        raise AnnotationError(f"{path}: no annotated people in split {split}")
    return _mpii_truth(path, split, description, chosen)


def load_annotations(benchmark: str, path: str, split: str | None = None,
                     mpii_validation: str | None = None) -> GroundTruth:
    """The scored examples of `path` for benchmark lsp, flic or mpii (see the module docstring);
    `split` None: the benchmark's default."""
    if benchmark not in SPLITS:
        raise AnnotationError(f"unknown benchmark {benchmark!r}; known: {', '.join(SPLITS)}")
    if split is not None and split not in SPLITS[benchmark]:
        raise AnnotationError(f"{benchmark}: unknown split {split!r}; known: {', '.join(SPLITS[benchmark])}")
    matfile.require_file(path)
    if mpii_validation is not None and benchmark != "mpii":
        raise AnnotationError(f"--mpii_validation applies to mpii, not {benchmark}")
    if benchmark == "lsp":
        return load_lsp(path, split or "test")
    if benchmark == "flic":
        return load_flic(path, split or "test")
    return load_mpii(path, split, mpii_validation)
