"""What the machine can do: peak FLOP/s, the rate a matrix product reaches, memory bandwidth, memory.

The achieved FLOP/s of a step means little without the ceiling it is set against:
  * `device_peak`: a CPU's peak from /proc/cpuinfo (cores x nominal GHz x FLOPs per cycle of its
    widest FMA, `cpu_peak`), an accelerator's from the vendor's dense figure (`ACCELERATOR_PEAKS`);
  * `matmul_gflops`: what a large matrix product reaches in practice (CPU clocks may boost above
    the nominal one, so a step can pass a CPU's reckoned peak);
  * `elementwise_gb_per_s`: GB/s an elementwise pass moves, over an array larger than the caches
    (main memory) and one that fits in them: the ceiling of a step's memory-bound parts (ReLU,
    pooling, pads, layout changes);
  * `peak_host_memory_gb` / `peak_device_memory_gb`: the process's peak resident memory and, on
    an accelerator, JAX's peak device memory.
Units: GFLOP/s (1e9 FLOPs a second, 1 multiply-add = 2 FLOPs), GB/s (1e9 bytes), GB (2^30 bytes).
"""
import os
import resource
import statistics

import jax
import jax.numpy as jnp

from cpm_jax.benchmarks.timing import LAYER_SAMPLE_S, calls_lasting, repeat, timed

MEMORY_MIB = (256, 2048)  # arrays well past a CPU's / an accelerator's caches
CACHE_MIB = 4
# Dense peak TFLOP/s (bfloat16, float32) by a substring of `device.device_kind`; vendor sheets.
ACCELERATOR_PEAKS = {
    "H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L4": (121.0, 30.3),
    "TPU v4": (275.0, None), "TPU v5 lite": (197.0, None), "TPU v5e": (197.0, None),
    "TPU v5p": (459.0, None), "TPU v6": (918.0, None),
}


def peak_host_memory_gb() -> float:
    """The process's peak resident memory so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def peak_device_memory_gb(device) -> float | None:
    """JAX's peak memory in use on an accelerator `device` so far; None on a CPU or where the
    runtime keeps no statistics."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    return stats["peak_bytes_in_use"] / 2 ** 30 if stats and "peak_bytes_in_use" in stats else None


def cpu_peak(cpuinfo: str, cores: int) -> tuple[float, str]:
    """(FP32 GFLOP/s, how it was reckoned) from /proc/cpuinfo's text: cores x GHz x FLOPs per
    cycle of the widest FMA the flags show (two FMA pipes per core). AMD Zen 4 (family 25 with
    AVX-512) executes 512-bit FMAs as two 256-bit halves, so it counts as AVX2."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags_ = set(fields.get("flags", "").split())
    ghz = float(fields.get("cpu MHz", "0") or 0) / 1000
    amd_zen4 = fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
    if "avx512f" in flags_ and not amd_zen4:
        per_cycle, isa = 64, "AVX-512 FMA x2"
    elif "fma" in flags_ and "avx2" in flags_:
        per_cycle, isa = 32, "AVX2 FMA x2" + (" (Zen 4 AVX-512 is 2x256-bit)" if amd_zen4 else "")
    elif "avx" in flags_:
        per_cycle, isa = 16, "AVX"
    else:
        per_cycle, isa = 8, "SSE"
    if not ghz:
        return 0.0, "unknown (no 'cpu MHz' in /proc/cpuinfo; pass --peak_gflops)"
    peak = cores * ghz * per_cycle
    return peak, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({isa}) = {peak:.0f} GFLOP/s"


def device_peak(device, dtype: str) -> tuple[float, str]:
    """(peak GFLOP/s of `dtype`, how it was reckoned) for a JAX device; 0 where unknown."""
    if device.platform == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            return 0.0, "unknown (no /proc/cpuinfo; pass --peak_gflops)"
        return cpu_peak(text, len(os.sched_getaffinity(0)))
    for name, (bf16, fp32) in ACCELERATOR_PEAKS.items():
        if name.lower() in device.device_kind.lower():
            peak = bf16 if dtype == "bfloat16" else fp32
            if peak:
                return peak * 1e3, f"{device.device_kind} dense {dtype} peak, vendor figure: {peak:g} TFLOP/s"
    return 0.0, f"unknown for {device.device_kind} {dtype} (pass --peak_gflops)"


def matmul_gflops(dtype: str, size: int) -> float:
    """GFLOP/s of a (size x size) @ (size x size) product in `dtype` on JAX's default device: what
    dense arithmetic reaches here in practice (CPU clocks often boost above the nominal one)."""
    a = jnp.ones((size, size), dtype)
    product = jax.jit(jnp.dot).lower(a, a).compile()
    seconds = statistics.median([timed(lambda: product(a, a)) for _ in range(7)])
    return 2 * size ** 3 / seconds / 1e9


def elementwise_gb_per_s(mib: int) -> float:
    """GB/s (read plus write) of `x * 2` over a float32 array of `mib` MiB on JAX's default
    device: main memory's bandwidth for an array larger than the caches, the caches' for one that
    fits in them."""
    x = jnp.ones((mib * 2 ** 18,), jnp.float32)
    double = jax.jit(lambda x: x * 2).lower(x).compile()
    calls = calls_lasting(LAYER_SAMPLE_S, lambda: double(x))
    seconds = statistics.median([timed(lambda: repeat(lambda: double(x), calls)) for _ in range(5)]) / calls
    return 2 * x.nbytes / seconds / 1e9
