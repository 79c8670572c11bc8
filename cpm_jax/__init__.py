"""Convolutional Pose Machines (Wei et al., CVPR 2016) in JAX/Flax."""
import importlib.metadata
import os
import sys

# jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK fusions, about 2x slower than its Eigen path
# for this model's large kernels (reference section 8; demo training 14.2 vs 8.9 img/s on 2 cores).
# The flag only touches the CPU compiler, and must be set before JAX is imported.
_CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _prefer_eigen_cpu_convolutions() -> None:
    if "jax" in sys.modules or "xla_cpu_experimental_ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        if not importlib.metadata.version("jaxlib").startswith("0.10."):
            return  # Re-measure before carrying the flag to another jaxlib.
    except importlib.metadata.PackageNotFoundError:
        return
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CPU_CONV_FLAG}".strip()


_prefer_eigen_cpu_convolutions()
