"""Training: the data-parallel step (`step`), the job (`trainer`), its state, optimisers, schemes,
workdir and checkpoints, preemption, multi-host set-up, summaries, gradient histograms, held-out
evaluation during training, and exporting a shipped model (`release`)."""
