"""Speed measurements of the CPM, for `python -m cpm_jax.bench` and the accelerator check.

  timing        timed calls, alternating runners, medians and spread, XLA compilations
  hardware      peak FLOP/s, a matrix product's rate, memory bandwidth, peak memory
  runners       JAX's training step and forward pass, the PyTorch peer, the input pipeline
  layers        per-convolution times and the form each runs in on a CPU
  measure       one `bench` run: every figure as one dict
  report        the table people read
  torch_peer    the same network in PyTorch (the optional `bench` extra)
  accelerator   the prepared GPU/TPU check: `python -m cpm_jax.benchmarks.accelerator --out FILE`,
                with batch_search, pipeline_scaling and train_run
Nothing here is imported by training or evaluation.
"""
