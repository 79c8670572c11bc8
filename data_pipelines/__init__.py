"""Input side of cpm_jax: dataset readers, augmentation and belief-map targets (TensorFlow, CPU only)."""
