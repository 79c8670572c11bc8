"""The CPU backend: everything only a CPU run needs, behind one call, `backend.setup()`.

  * `process`: XLA flag, malloc and dispatch settings for XLA:CPU;
  * `onednn`: oneDNN's convolution kernels, compiled on first use and registered with XLA;
  * `convolution`: `conv_general_dilated`, a drop-in for `lax.conv_general_dilated` that runs each
    layer in the fastest form on a CPU (DFTs as matrix products, oneDNN, elementwise sums).

Only the process set-up (`cpm_jax.runtime`) and the benchmark import this package; `runtime`
hands `backend.Backend.convolution` to `cpm_jax.platform`, which gives it to models built on a CPU. The
model itself (`cpm_jax.model`) never sees it. How it works and what it gains: docs/performance.md.
"""
