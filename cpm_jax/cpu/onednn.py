"""oneDNN's convolution kernels inside XLA programs on a CPU (XLA FFI custom calls).

XLA:CPU's own convolutions run this model's layers slower than oneDNN's, the library PyTorch
calls on CPUs. `kernels/onednn_convolution.cc` wraps oneDNN's stride-1 float32 NHWC convolution
(HWIO kernel, pads 0 to kernel size - 1) and its two gradients as XLA FFI handlers; this module
compiles that file against the oneDNN wheels (`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`: the
`cpu` extra on Linux x86-64) and jaxlib's FFI headers with `$CXX` (default g++), once per source,
compiler command, jaxlib and oneDNN version (seconds; kept in the user's cache directory), loads
it, and registers the handlers for the CPU platform. `convolution.py` sends layers here where
`available()`.

    onednn.setup()       # cpu.backend.setup() calls it: build if needed, load, register; -> a sentence
    onednn.available()   # -> bool: loaded and registered in this process
    onednn.forward(x, kernel, pads), onednn.gradients(x, kernel, g, pads)  # in a CPU program

Where it cannot load (another platform, no C++ compiler, the wheels missing, the cache not
writable), setup() says why and the model keeps XLA's convolutions: the same results, slower.
oneDNN runs on XLA's own threads: each call splits its batch (or, with fewer images than
threads, each image's rows) over XLA's intra-op thread pool, one single-threaded oneDNN call a
part; oneDNN's OpenMP threads beside XLA's would oversubscribe the cores (the kernel's source
says how; docs/performance.md, with figures).
"""
import ctypes
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).resolve().parent / "kernels" / "onednn_convolution.cc"
LIBRARY_PACKAGE, HEADERS_PACKAGE = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"
TARGETS = ("CpmConvForward", "CpmConvBackwardData", "CpmConvBackwardWeights")

_state: dict = {}  # "status": setup()'s sentence; "library": the loaded ctypes.CDLL


class Unavailable(Exception):
    """Why the kernels cannot be built or loaded here."""


def setup() -> str:
    """Builds the library if this source, jaxlib and oneDNN have none yet, loads it and registers
    its handlers; idempotent. Returns a sentence saying what happened or why not."""
    if "status" not in _state:
        try:
            start = time.perf_counter()
            path, built = library_path()
            _state["library"] = _register(path)
            how = f"built in {time.perf_counter() - start:.1f} s" if built else "built before"
            _state["status"] = (f"oneDNN convolutions ({LIBRARY_PACKAGE} {importlib.metadata.version(LIBRARY_PACKAGE)}) "
                                f"on CPUs ({path}, {how})")
        except Unavailable as why:
            _state["status"] = f"XLA's own convolutions on CPUs: oneDNN's not available ({why})"
    return _state["status"]


def available() -> bool:
    """Whether setup() loaded and registered the kernels in this process."""
    return "library" in _state


def supported_platform() -> bool:
    """Linux x86-64: where the `cpu` extra installs oneDNN's wheels, and setup() should succeed."""
    return sys.platform == "linux" and platform.machine() == "x86_64"


def status() -> str:
    """setup()'s sentence, or that it has not run."""
    return _state.get("status", "XLA's own convolutions on CPUs: onednn.setup() has not run")


def library_path() -> tuple[pathlib.Path, bool]:
    """(the compiled library for this source, jaxlib and oneDNN, built now if it was not; whether
    this call built it). Raises Unavailable where it cannot be built."""
    if not supported_platform():
        raise Unavailable(f"built for Linux x86-64 only; this is {sys.platform} {platform.machine()}")
    header = _package_file(HEADERS_PACKAGE, "include/oneapi/dnnl/dnnl.hpp")
    library = _package_file(LIBRARY_PACKAGE, "lib/libdnnl.so")
    command = [os.environ.get("CXX", "g++"), "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", f"-I{header.parents[2]}", str(SOURCE),
               f"-L{library.parent}", "-ldnnl", f"-Wl,-rpath,{library.parent}"]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(command).encode()
                         + importlib.metadata.version("jaxlib").encode()
                         + importlib.metadata.version(LIBRARY_PACKAGE).encode()).hexdigest()[:16]
    path = _cache_dir() / f"libcpm_onednn-{key}.so"
    if path.exists():
        return path, False
    if shutil.which(command[0]) is None:
        raise Unavailable(f"no C++ compiler: {command[0]!r} not found (set CXX)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # then one rename: never half a file
            partial = pathlib.Path(scratch) / path.name
            done = subprocess.run(command + ["-o", str(partial)], capture_output=True, text=True)
            if done.returncode != 0:
                errors = " / ".join(line for line in done.stderr.splitlines()[-6:] if line.strip())
                raise Unavailable(f"compiling {SOURCE.name} failed, exit status {done.returncode}: "
                                  f"{' '.join(command)}: {errors or 'no message'}")
            os.replace(partial, path)
    except OSError as error:  # the cache directory not writable, the disk full
        raise Unavailable(f"cannot build {path}: {error}") from None
    return path, True


def _package_file(package: str, tail: str) -> pathlib.Path:
    """The installed file of `package` whose path ends with `tail`."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"{package} is not installed (pip install 'cpm_jax[cpu]')") from None
    for file in files:
        path = pathlib.Path(file.locate()).resolve()
        if path.as_posix().endswith(tail):
            return path
    raise Unavailable(f"{package} has no {tail}")


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "cpm_jax"


def _register(path: pathlib.Path) -> ctypes.CDLL:
    try:
        library = ctypes.cdll.LoadLibrary(str(path))
    except OSError as error:
        raise Unavailable(f"cannot load {path}: {error}") from None
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    return library


def supports(x, kernel, pads) -> bool:
    """Whether `conv` takes this layer: float32, every pad from 0 to the kernel's size - 1."""
    kh, kw = kernel.shape[:2]
    return (x.dtype == jnp.float32 and kernel.dtype == jnp.float32
            and all(0 <= p < k for pair, k in zip(pads, (kh, kw)) for p in pair))


def _pad_attributes(pads) -> dict:
    (top, bottom), (left, right) = pads
    return {"pad_top": np.int64(top), "pad_bottom": np.int64(bottom),
            "pad_left": np.int64(left), "pad_right": np.int64(right)}


def _call(target: str, shape, *operands, pads):
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32), vmap_method="sequential")(
        *operands, **_pad_attributes(pads))


def forward(x, kernel, pads):
    """(B, H, W, C) x (kh, kw, C, O) float32 -> (B, H', W', O), stride 1, `pads` ((top, bottom),
    (left, right)) as `supports` allows; CPU only, after setup() loaded the kernels."""
    (top, bottom), (left, right) = pads
    kh, kw, _, outputs = kernel.shape
    shape = (x.shape[0], x.shape[1] + top + bottom - kh + 1, x.shape[2] + left + right - kw + 1, outputs)
    return _call("CpmConvForward", shape, x, kernel, pads=pads)


def gradients(x, kernel, g, pads):
    """`forward`'s gradients for the output cotangent g (B, H', W', O): (dx, dkernel)."""
    return (_call("CpmConvBackwardData", x.shape, g, kernel, pads=pads),
            _call("CpmConvBackwardWeights", kernel.shape, x, g, pads=pads))
