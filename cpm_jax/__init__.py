"""Convolutional Pose Machines (Wei et al., CVPR 2016) in JAX/Flax.

Importing this package (or any module of it) changes nothing in the process: no environment
variable, no matplotlib backend, no TensorFlow device list. Entry points call
`cpm_jax.runtime.setup()` first (the XLA CPU convolution flag among others).
"""
