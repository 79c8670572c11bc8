"""MPII Human Pose reader (docs/paper_notes.md sections 3 and 7) following the release's genJSON.m ('MPI').

`root` holds `mpii_human_pose_v1_u12_1.mat` (or the official zip's folder
`mpii_human_pose_v1_u12_2/` with that file in it) and `images/`. The file's struct `RELEASE` has
  annolist(i).image.name              the image file
  annolist(i).annorect(p)             the people: objpos.x/.y (rough centre), scale (height / 200 px),
                                      head box x1 y1 x2 y2, annopoints.point(k) with id, x, y, is_visible
  img_train(i)                        1 for the training images
Loaded with `squeeze_me=True`, every "array of structs" can also be a single struct or empty;
`as_list` turns all three into a list.

As genJSON.m: every person of a training image with `annopoints.point` is one sample (joints from
the points, centre objpos, scale annorect.scale); the other people of the same image that have
points are its `others`. People without points (annopoints missing or empty, or an empty point
list) are neither. `is_visible` 0 or '0' is occluded (visibility 1); anything else, empty or
missing is visible (2). Joints a person does not list are not labelled (visibility 0, coordinates
0; the release's zero rows are not reproduced as peaks). MATLAB's 1-based pixels become 0-based;
the scale becomes pixels (200 x annorect.scale). Every sample carries its head box (annorect
x1 y1 x2 y2 less 1, the PCKh normaliser; NaN where the rect has none) in `Annotations.head_boxes`.

Splits (`read`): `train` is every such person; `valid` the 2,958 validation people of Tompson et
al., read from their `detections.mat` (`read_validation`), which `train` then leaves out.
`read_entries` reads a one-person-per-entry file for scoring. Problems with the files are
`DataError`s naming the file and the element; people are named in MATLAB's 1-based notation,
`annolist(i).annorect(p)`.
"""
import dataclasses
import os
from typing import Any, Optional

import numpy as np

from cpm_jax.errors import DataError
from data_pipelines import matfile, records, skeleton

RELEASE_FILE = "mpii_human_pose_v1_u12_1.mat"
RELEASE_FOLDER = "mpii_human_pose_v1_u12_2"     # the official zip's folder
NUM_MPII_JOINTS = 16
# Project joint j (skeleton.JOINT_NAMES, LSP order) <- MPII id MPII_IDS[j]; 6 pelvis and 7 thorax
# are dropped. MPII ids: 0 r ankle, 1 r knee, 2 r hip, 3 l hip, 4 l knee, 5 l ankle, 6 pelvis,
# 7 thorax, 8 upper neck, 9 head top, 10 r wrist, 11 r elbow, 12 r shoulder, 13 l shoulder,
# 14 l elbow, 15 l wrist.
MPII_IDS = (0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 8, 9)
assert len(MPII_IDS) == skeleton.NUM_JOINTS
_PROJECT_INDEX = {mpii_id: j for j, mpii_id in enumerate(MPII_IDS)}
SPLITS = ("train", "valid")


@dataclasses.dataclass(frozen=True)
class Person:
    """One annotated person of the release, in 0-based pixels and the project's joint order."""
    image_index: int               # 0-based annolist index
    person_index: int              # 0-based annorect index
    image_name: str
    joints: np.ndarray             # (14, 2) float64, 0 where not labelled
    visibility: np.ndarray         # (14,) int32: 0 not labelled, 1 occluded, 2 visible
    center: np.ndarray             # (2,) objpos - 1
    scale: float                   # 200 x annorect.scale: person height in pixels
    head_box: np.ndarray           # (4,) x1 y1 x2 y2 - 1, NaN where the rect has none

    @property
    def where(self) -> str:
        return f"annolist({self.image_index + 1}).annorect({self.person_index + 1})"


def _occluded(point: Any) -> bool:
    """genJSON.m: is_visible == 0 or == '0' is occluded; anything else (including an empty or
    missing value, which MATLAB's `||` rejects into its catch branch) is visible."""
    value = getattr(point, "is_visible", None) if matfile.is_struct(point) else None
    if value is None or matfile.is_empty(value):
        return False
    if isinstance(value, str):
        return value.strip() == "0"
    array = np.asarray(value)
    if array.size != 1:
        return False
    if array.dtype.kind in "US":
        return str(array.reshape(())).strip() == "0"
    if np.issubdtype(array.dtype, np.number) or array.dtype == bool:
        return float(array.reshape(())) == 0
    return False


def _points(rect: Any, where: str) -> list:
    """The rect's annopoints.point as a list; [] where there is none (the field missing or
    empty, as genJSON.m's try/catch skips); anything else than a struct there is an error."""
    if not matfile.is_struct(rect):
        raise DataError(f"{where}: expected a MATLAB struct, found {type(rect).__name__}")
    annopoints = getattr(rect, "annopoints", None) if matfile.has_field(rect, "annopoints") else None
    if matfile.is_empty(annopoints):
        return []
    if not matfile.is_struct(annopoints):
        raise DataError(f"{where}.annopoints: expected a MATLAB struct, "
                        f"found {type(annopoints).__name__}")
    if not matfile.has_field(annopoints, "point"):
        return []
    return matfile.as_list(annopoints.point)


def _head_box(rect: Any) -> np.ndarray:
    """(4,) x1 y1 x2 y2 - 1; NaN where the rect has no (numeric) head box."""
    try:
        box = [float(np.asarray(getattr(rect, k)).reshape(())) for k in ("x1", "y1", "x2", "y2")]
    except (AttributeError, ValueError, TypeError):
        return np.full(4, np.nan)
    return np.array(box) - 1.0


def _person(rect: Any, points: list, image_index: int, person_index: int, image_name: str,
            path: str) -> Person:
    where = f"{path}: annolist({image_index + 1}).annorect({person_index + 1})"
    joints = np.zeros((skeleton.NUM_JOINTS, 2))
    visibility = np.zeros(skeleton.NUM_JOINTS, np.int32)
    for k, point in enumerate(points):
        at = f"{where}.annopoints.point({k + 1})"
        mpii_id = matfile.number(matfile.field(point, "id", at), f"{at}.id")
        if mpii_id != int(mpii_id) or not 0 <= mpii_id < NUM_MPII_JOINTS:
            raise DataError(f"{at}: joint id {mpii_id:g} is not one of 0..{NUM_MPII_JOINTS - 1}")
        x = matfile.number(matfile.field(point, "x", at), f"{at}.x")
        y = matfile.number(matfile.field(point, "y", at), f"{at}.y")
        j = _PROJECT_INDEX.get(int(mpii_id))
        if j is None:      # pelvis, thorax
            continue
        joints[j] = (x - 1.0, y - 1.0)     # a repeated id overwrites, as in genJSON.m
        visibility[j] = 1 if _occluded(point) else 2
    objpos = matfile.field(rect, "objpos", where)
    center = np.array([matfile.number(matfile.field(objpos, "x", f"{where}.objpos"), f"{where}.objpos.x"),
                       matfile.number(matfile.field(objpos, "y", f"{where}.objpos"), f"{where}.objpos.y")]) - 1.0
    scale = 200.0 * matfile.number(matfile.field(rect, "scale", where), f"{where}.scale")
    return Person(image_index, person_index, image_name, joints, visibility, center, scale,
                  _head_box(rect))


def find_release(root: str) -> str:
    """The path of the release's .mat under `root` (or under its zip folder)."""
    candidates = [os.path.join(root, RELEASE_FILE), os.path.join(root, RELEASE_FOLDER, RELEASE_FILE)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory (the MPII folder, holding {RELEASE_FILE} and images/)")
    raise DataError(f"MPII: no annotation file {candidates[0]} (nor {candidates[1]})")


def _release(path: str) -> tuple[list, np.ndarray]:
    """(annolist entries, img_train) of the release file `path`."""
    mat = matfile.load(path, structs=True)
    if "RELEASE" not in mat:
        raise matfile.missing_variable(path, "RELEASE", mat)
    release = mat["RELEASE"]
    annolist = matfile.as_list(matfile.field(release, "annolist", f"{path}: RELEASE"))
    img_train = np.atleast_1d(np.asarray(matfile.field(release, "img_train", f"{path}: RELEASE"))).ravel()
    if len(img_train) != len(annolist):
        raise DataError(f"{path}: RELEASE.img_train has {len(img_train)} entries, "
                        f"annolist {len(annolist)}")
    return annolist, img_train


def _image_name(entry: Any, where: str) -> str:
    image = matfile.field(entry, "image", where)
    name = matfile.field(image, "name", f"{where}.image")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}.image.name: expected a file name, found {name!r}")
    return name


def load_people(path: str, only_train: bool = True) -> tuple[int, list[Person]]:
    """(number of annolist entries, every person with annopoints.point), in annolist and annorect
    order, from the release file `path`; `only_train` reads only the images with img_train == 1
    (the others are not parsed at all, as in genJSON.m)."""
    annolist, img_train = _release(path)
    people = []
    for i, entry in enumerate(annolist):
        if only_train and matfile.number(img_train[i], f"{path}: RELEASE.img_train({i + 1})") != 1:
            continue
        where = f"{path}: annolist({i + 1})"
        rects = matfile.as_list(matfile.field(entry, "annorect", where))
        image_name = None
        for p, rect in enumerate(rects):
            points = _points(rect, f"{where}.annorect({p + 1})")
            if not points:
                continue       # "sometimes no annotation at all": no sample, no other
            if image_name is None:
                image_name = _image_name(entry, where)
            people.append(_person(rect, points, i, p, image_name, path))
    return len(annolist), people


def read_entries(path: str) -> list[Optional[Person]]:
    """One person per annolist entry, in file order, from a file whose top-level `annolist` lists
    single people (as the validation-split annotations are distributed), or from the release's
    RELEASE.annolist read the same way: entry i gives its one annorect's Person (image_index i,
    person_index 0, image name "" where the entry has none), or None where that person has no
    annotated points. An entry without exactly one annorect is a DataError."""
    mat = matfile.load(path, structs=True)
    if "RELEASE" in mat:
        annolist = matfile.field(mat["RELEASE"], "annolist", f"{path}: RELEASE")
    elif "annolist" in mat:
        annolist = mat["annolist"]
    else:
        raise DataError(f"{path}: neither 'RELEASE' nor 'annolist' (found: "
                        f"{', '.join(mat) or 'nothing'}); not MPII annotations")
    people = []
    for i, entry in enumerate(matfile.as_list(annolist)):
        where = f"{path}: annolist({i + 1})"
        rects = matfile.as_list(matfile.field(entry, "annorect", where))
        if len(rects) != 1:
            raise DataError(f"{where} has {len(rects)} annorect; a one-person-per-entry file has "
                            "exactly one (the full release is read by split: valid or train)")
        points = _points(rects[0], f"{where}.annorect(1)")
        if not points:
            people.append(None)
            continue
        image = getattr(entry, "image", None) if matfile.has_field(entry, "image") else None
        name = image.name if matfile.has_field(image, "name") and isinstance(image.name, str) else ""
        people.append(_person(rects[0], points, i, 0, name, path))
    if not people:
        raise DataError(f"{path}: 'annolist' is empty")
    return people


def validation_path(root: str, validation_file: str) -> str:
    """The validation file to read: `validation_file` itself if it exists; a relative one that
    does not is looked for under the dataset `root`. DataError naming both places if neither has it."""
    if os.path.exists(validation_file) or os.path.isabs(validation_file):
        return validation_file
    under_root = os.path.join(root, validation_file)
    if os.path.exists(under_root):
        return under_root
    raise DataError(f"{validation_file}: no such file (nor {under_root}): the validation people "
                    "(Tompson et al.'s detections.mat)")


def read_validation(path: str) -> list[tuple[int, int]]:
    """Tompson et al.'s validation people as 0-based (annolist, annorect) pairs, in file order,
    from `detections.mat`'s `RELEASE_img_index` and `RELEASE_person_index` (1-based indices)."""
    mat = matfile.load(path)
    pairs = []
    for name in ("RELEASE_img_index", "RELEASE_person_index"):
        if name not in mat:
            raise matfile.missing_variable(path, name, mat)
        values = np.asarray(mat[name]).ravel()
        if not np.issubdtype(values.dtype, np.number) or not np.all(values == np.round(values)) \
                or not np.all(values >= 1):
            raise DataError(f"{path}: '{name}' must hold 1-based indices")
        pairs.append(values.astype(np.int64) - 1)
    if len(pairs[0]) != len(pairs[1]):
        raise DataError(f"{path}: RELEASE_img_index has {len(pairs[0])} entries, "
                              f"RELEASE_person_index {len(pairs[1])}")
    return list(zip(pairs[0].tolist(), pairs[1].tolist()))


def _table(dataset: str, root: str, chosen: list[Person], by_image: dict[int, list[Person]]) \
        -> records.Annotations:
    n, p = len(chosen), skeleton.NUM_JOINTS
    others = [[o for o in by_image[s.image_index] if o.person_index != s.person_index] for s in chosen]
    k = max((len(o) for o in others), default=0)
    others_joints = np.zeros((n, k, p, 2))
    others_visibility = np.zeros((n, k, p), np.int32)
    for i, people in enumerate(others):
        for m, other in enumerate(people):
            others_joints[i, m] = other.joints
            others_visibility[i, m] = other.visibility
    return records.make(
        dataset, [os.path.join(root, "images", s.image_name) for s in chosen],
        np.array([s.joints for s in chosen]).reshape(n, p, 2),
        np.array([s.visibility for s in chosen]).reshape(n, p),
        np.array([s.center for s in chosen]).reshape(n, 2),
        np.array([s.scale for s in chosen]), others_joints, others_visibility,
        np.array([s.head_box for s in chosen]).reshape(n, 4))


def read(root: str, split: str, validation_file: str | None = None,
         name: str = "mpii") -> records.Annotations:
    """One split of the MPII training images: 'train' (all annotated people, less the validation
    people when `validation_file` is given) or 'valid' (exactly the people of `validation_file`,
    Tompson's detections.mat, in its order), located by `validation_path`."""
    if split not in SPLITS:
        raise DataError(f"MPII ({root}): unknown split {split!r}; known: {', '.join(SPLITS)}")
    if validation_file is not None:
        validation_file = validation_path(root, validation_file)
    people, chosen = select_people(find_release(root), split, validation_file)
    by_image: dict[int, list[Person]] = {}
    for person in people:
        by_image.setdefault(person.image_index, []).append(person)
    return _table(f"{name}/{split}", root, chosen, by_image)


def select_people(path: str, split: str, validation_file: str | None = None) -> tuple[list[Person], list[Person]]:
    """(every annotated training person, the people of `split`) of the release file `path`:
    'train' is all of them less the validation people of `validation_file` (if given); 'valid'
    is exactly those, in the file's order."""
    if split == "valid" and validation_file is None:
        raise DataError(f"MPII ({path}): split 'valid' needs a validation file (Tompson et al.'s "
                        "detections.mat with RELEASE_img_index and RELEASE_person_index; "
                        "data.mpii_validation_file)")
    num_images, people = load_people(path)
    validation = read_validation(validation_file) if validation_file is not None else []
    if split == "train":
        excluded = set(validation)
        return people, [s for s in people if (s.image_index, s.person_index) not in excluded]
    index = {(s.image_index, s.person_index): s for s in people}
    chosen = []
    for n, (i, p) in enumerate(validation):
        if (i, p) not in index:
            why = ("beyond the release's annolist" if i >= num_images else
                   "not a training image's person with annopoints.point in the release")
            raise DataError(f"{validation_file}: validation entry {n + 1}, "
                            f"annolist({i + 1}).annorect({p + 1}) of {path}, is {why}")
        chosen.append(index[(i, p)])
    return people, chosen
