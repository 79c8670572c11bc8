"""Writers of small MATLAB files in the official datasets' nested structures, for tests.

scipy.io.savemat writes a dict as a MATLAB struct, but a list of dicts as a cell array; a struct
ARRAY is a numpy structured array of object fields (`struct_array`). Loaded back with
`loadmat(path, struct_as_record=False, squeeze_me=True)`, as the readers do, a 1-element struct
array is a single struct and an empty value is an empty array, as with the real files.

Descriptions are plain Python; every coordinate is in the files' own 1-based MATLAB pixels.

MPII image (`write_mpii_release`):
    {"name": "001.jpg", "train": 1,            # img_train, default 1
     "people": [person, ...]}                  # [] -> annorect = []
  person:
    {"objpos": (x, y), "scale": s, "head": (x1, y1, x2, y2),
     "points": [{"id": 9, "x": 10.0, "y": 20.0, "is_visible": 1}, ...]}
  A key left out of a person (or point) is written as [] where another element of the same
  struct array has it, and not at all where none has, which are the two shapes a missing
  value takes in MATLAB. "points": None is the same as leaving it out (no annopoints).
  `is_visible` is written as given: an int, a string '0'/'1', or left out. Any other key is
  written as a field unchanged (e.g. "objpos": [] or a raw value for malformed-file tests).

MATLAB v7.3 (`write_v73`): HDF5 after MATLAB's 512-byte header, as `save(..., '-v7.3')` writes
it: arrays stored in reversed dimension order, char arrays as uint16 with MATLAB_class 'char',
structs as HDF5 groups (written empty here: the readers do not read v7.3 structs).

FLIC example (`write_flic_examples`):
    {"filepath": "a.jpg", "coords": {1: (x, y), 4: (x, y), ...} or a 2 x 29 array,
     "torsobox": (x1, y1, x2, y2), "istrain": 1, "istest": 0, "imgdims": (480, 720, 3)}
  coords columns are 1-based as in the file; the columns not given are NaN. istrain defaults
  to `not istest`, istest to 0. "omit": ("torsobox", ...) leaves fields out (for error tests);
  any other key is written as a field unchanged.
"""
import numpy as np
import scipy.io

EMPTY = np.zeros((0, 0))          # MATLAB's []
# The first 128 bytes of a MATLAB v7.3 file: text, subsystem offset, version 0x0200, 'IM'.
V73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
FLIC_ANNOTATED_COLUMNS = (1, 2, 3, 4, 5, 6, 7, 10, 13, 14, 17)   # 1-based


def struct_array(elements: list[dict]) -> np.ndarray:
    """A 1 x n MATLAB struct array whose fields are the union of the elements' keys (in first-seen
    order); an element without a key gets [] there. n = 0 gives MATLAB's []."""
    if not elements:
        return EMPTY
    names = []
    for element in elements:
        names += [k for k in element if k not in names]
    array = np.zeros((1, len(elements)), dtype=[(k, object) for k in names])
    for j, element in enumerate(elements):
        for k in names:
            array[0, j][k] = element[k] if k in element else EMPTY
    return array


def _double(value) -> np.ndarray:
    return np.asarray(value, np.float64)


def _mpii_point(point: dict) -> dict:
    out = {}
    for key, value in point.items():
        out[key] = _double(value) if key in ("id", "x", "y") else value
    return out


def _mpii_person(person: dict) -> dict:
    out = {}
    for key, value in person.items():
        if key == "head":
            out.update({k: _double(v) for k, v in zip(("x1", "y1", "x2", "y2"), value)})
        elif key == "objpos" and isinstance(value, (tuple, list)) and len(value) == 2:
            out["objpos"] = {"x": _double(value[0]), "y": _double(value[1])}
        elif key == "scale":
            out["scale"] = _double(value)
        elif key == "points":
            if value is not None:
                out["annopoints"] = {"point": struct_array([_mpii_point(p) for p in value])}
        else:
            out[key] = value
    return out


def mpii_release(images: list[dict]) -> dict:
    """The `RELEASE` struct (as a dict for savemat) of the described images."""
    annolist = struct_array([
        {"image": {"name": image["name"]},
         "annorect": struct_array([_mpii_person(p) for p in image.get("people", [])]),
         "frame_sec": EMPTY, "vididx": EMPTY}
        for image in images])
    img_train = np.array([[float(image.get("train", 1)) for image in images]])
    single_person = np.empty((len(images), 1), dtype=object)      # a cell, unused here
    for i in range(len(images)):
        single_person[i, 0] = EMPTY
    return {"annolist": annolist, "img_train": img_train, "version": "12",
            "single_person": single_person, "act": EMPTY, "video_list": EMPTY}


def write_mpii_release(path, images: list[dict]) -> str:
    """Writes `mpii_human_pose_v1_u12_1.mat`-style `RELEASE` to `path`; returns str(path)."""
    scipy.io.savemat(str(path), {"RELEASE": mpii_release(images)})
    return str(path)


def write_tompson_validation(path, people: list[tuple[int, int]]) -> str:
    """Tompson et al.'s `detections.mat` variables for (1-based annolist index, 1-based annorect
    index) pairs; returns str(path)."""
    people = np.asarray(people, np.float64).reshape(-1, 2)
    scipy.io.savemat(str(path), {"RELEASE_img_index": people[:, 0][None],
                                 "RELEASE_person_index": people[:, 1][None]})
    return str(path)


def flic_coords(columns: dict) -> np.ndarray:
    """A 2 x 29 `coords` array: NaN except the given 1-based columns -> (x, y)."""
    coords = np.full((2, 29), np.nan)
    for column, (x, y) in columns.items():
        coords[:, column - 1] = (x, y)
    return coords


def flic_examples(examples: list[dict]) -> np.ndarray:
    """The `examples` struct array of the described examples."""
    structs = []
    for e in examples:
        coords = e.get("coords", {})
        istest = int(e.get("istest", 0))
        struct = {"poselet_hit_idx": EMPTY, "moviename": e.get("moviename", "movie"),
                  "coords": flic_coords(coords) if isinstance(coords, dict) else _double(coords),
                  "filepath": e["filepath"],
                  "imgdims": _double([e.get("imgdims", (480, 720, 3))]),
                  "currframe": _double(e.get("currframe", 1)),
                  "torsobox": _double([e.get("torsobox", (1, 1, 2, 2))]),
                  "istrain": np.array(int(e.get("istrain", 1 - istest)), np.uint8),
                  "istest": np.array(istest, np.uint8),
                  "isbad": np.array(0, np.uint8), "isunchecked": np.array(0, np.uint8)}
        struct.update({k: v for k, v in e.items() if k not in struct and k != "omit"})
        for key in e.get("omit", ()):
            del struct[key]
        structs.append(struct)
    return struct_array(structs)


def write_flic_examples(path, examples: list[dict]) -> str:
    """Writes an `examples.mat` with variable `examples` to `path`; returns str(path)."""
    scipy.io.savemat(str(path), {"examples": flic_examples(examples)})
    return str(path)


def write_v73(path, arrays: dict, chars: dict | None = None, structs: tuple = ()) -> str:
    """A MATLAB v7.3 file of numeric `arrays` (name -> array in MATLAB's dimension order), char
    variables `chars` (name -> str, MATLAB 1 x n) and empty structs `structs`; returns str(path)."""
    import h5py
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in arrays.items():
            f[name] = np.asarray(value).T                        # MATLAB's order, reversed
        for name, text in (chars or {}).items():
            f[name] = np.array([[ord(c)] for c in text], np.uint16)
            f[name].attrs["MATLAB_class"] = np.bytes_("char")
        for name in structs:
            f.create_group(name)
    with open(path, "r+b") as f:
        f.write(V73_HEADER)
    return str(path)
