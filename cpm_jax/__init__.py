"""Convolutional Pose Machines (Wei et al., CVPR 2016) in JAX/Flax."""
