"""Small image files and LSP / LSP Extended layouts written by tests (docs/paper_notes.md section 7).

Coordinates given to the writers are the files' own 1-based MATLAB pixels.
"""
import io
import os
import pathlib

import numpy as np
import scipy.io
from PIL import Image

from tests.conftest import SHARED

LSPET_ROOT = SHARED / "datasets" / "lspet"


def lspet_available() -> bool:
    return (LSPET_ROOT / "joints.mat").is_file() and (LSPET_ROOT / "images" / "im00001.jpg").is_file()


def gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth uint8 (H, W, 3) RGB image (survives JPEG well) that differs with `seed`."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = seed * 37 % 256
    r = (xx * 255 / max(width - 1, 1) + phase) % 256
    g = (yy * 255 / max(height - 1, 1) + 2 * phase) % 256
    b = 255 - r
    return np.stack([r, g, b], -1).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **options) -> bytes:
    """`array` (H, W, 3) or (H, W) encoded as `fmt`, after conversion to PIL `mode` if given."""
    image = Image.fromarray(np.asarray(array, np.uint8))
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write(path, data: bytes) -> str:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_bytes(data)
    return str(path)


def write_jpeg(path, array: np.ndarray, quality: int = 95) -> str:
    return write(path, encode(array, "JPEG", quality=quality))


def lsp_matrix(joints: np.ndarray, flags: np.ndarray, layout: str) -> np.ndarray:
    """The `joints` variable of a joints.mat: (N, 14, 2) 1-based pixels and (N, 14) flags ->
    3 x 14 x N ('lsp') or 14 x 3 x N ('lspet')."""
    stacked = np.concatenate([np.asarray(joints, np.float64), np.asarray(flags, np.float64)[..., None]], -1)
    if layout == "lsp":
        return stacked.transpose(2, 1, 0)       # (3, 14, N)
    if layout == "lspet":
        return stacked.transpose(1, 2, 0)       # (14, 3, N)
    raise ValueError(layout)


def write_joints_mat(path, joints: np.ndarray, flags: np.ndarray, layout: str) -> str:
    scipy.io.savemat(str(path), {"joints": lsp_matrix(joints, flags, layout)})
    return str(path)


def image_name(layout: str, i: int) -> str:
    """File of 0-based sample i: images/im0001.jpg (LSP), images/im00001.jpg (LSPET)."""
    return f"images/im{i + 1:04d}.jpg" if layout == "lsp" else f"images/im{i + 1:05d}.jpg"


def write_layout(root, joints: np.ndarray, flags: np.ndarray, layout: str,
                 sizes: np.ndarray | None = None) -> pathlib.Path:
    """An LSP or LSPET directory: joints.mat plus one tiny JPEG per sample of (width, height)
    `sizes[i]` (grey gradient, quality 50: small and fast). `sizes` None writes no images."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    write_joints_mat(root / "joints.mat", joints, flags, layout)
    if sizes is not None:
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (int(w), int(h)), (i % 256, 128, 64)).save(root / image_name(layout, i),
                                                                          "JPEG", quality=50)
    return root


LSP_PHOTO_SIZES = [(60, 90), (84, 70), (100, 120)]      # (width, height)


def lsp_of_three_photos(root, seed: int = 0, linked=range(1000, 2000)):
    """An LSP directory (joints.mat 3 x 14 x 2000, 1-based) whose images `linked` (0-based
    samples) are links to three gradient JPEGs of (width, height) `LSP_PHOTO_SIZES`, sample i
    to photo i % 3; every joint drawn uniformly inside its photo (5 px margin). Returns root."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k, (w, h) in enumerate(LSP_PHOTO_SIZES):
        write_jpeg(root / f"source{k}.jpg", gradient(h, w, seed=k))
    rng = np.random.default_rng(seed)
    joints = np.zeros((2000, 14, 2))
    for i in range(2000):
        w, h = LSP_PHOTO_SIZES[i % 3]
        joints[i] = rng.uniform([5, 5], [w - 5, h - 5], (14, 2)) + 1.0         # 1-based
    for i in linked:
        os.symlink(root / f"source{i % 3}.jpg", root / image_name("lsp", i))
    write_joints_mat(root / "joints.mat", joints, np.zeros((2000, 14)), "lsp")
    return root


def lspet_subset(root, count: int) -> pathlib.Path:
    """An LSPET directory of the real set's first `count` samples: their columns of joints.mat
    and symlinks to their images (nothing is copied)."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    joints = scipy.io.loadmat(str(LSPET_ROOT / "joints.mat"))["joints"]
    scipy.io.savemat(str(root / "joints.mat"), {"joints": joints[:, :, :count]})
    for i in range(count):
        name = image_name("lspet", i)
        os.symlink(LSPET_ROOT / name, root / name)
    return root


def lsp_standin(root, every: int = 10) -> pathlib.Path:
    """LSP's file layout (joints.mat 3 x 14 x 2000, images/im0001.jpg ... im2000.jpg) built from
    real LSPET photos: LSP's test samples 1001-2000 are LSPET's held-out people (0-based indices
    0, every, 2 every, ...: data.heldout_every = `every`), linked, and samples 1-1000 repeat them.
    LSPET's flag 1 = visible becomes LSP's 0 = visible; its unlabelled joints keep their
    placeholder positions, flagged occluded (the LSP benchmark counts every joint)."""
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lspet = scipy.io.loadmat(str(LSPET_ROOT / "joints.mat"))["joints"]        # (14, 3, N)
    people = np.arange(0, lspet.shape[2], every)[:1000]
    chosen = np.concatenate([people, people])
    joints = lspet[:, :2, chosen].transpose(2, 0, 1)
    flags = 1.0 - lspet[:, 2, chosen].T
    write_joints_mat(root / "joints.mat", joints, flags, "lsp")
    for i, person in enumerate(chosen):
        os.symlink(LSPET_ROOT / image_name("lspet", int(person)), root / image_name("lsp", i))
    return root
