"""The demo: a tiny CPM learns the embedded synthetic figures on a CPU in minutes.

    python -m cpm_jax.train --config experiments/synthetic.py --workdir runs/demo    # or: make demo

Machine and time: a 2-core AMD EPYC Zen 5 CPU, about 1.5 minutes for the 1,500 steps of batch 8
(about 3 minutes for `make demo` on a fresh clone, the virtual environment's set-up included); a
2-core Zen 3 takes 4-6 minutes. Expected result: held-out PCK@0.2 (300 figures) of about
0.44 / 0.80 / 0.82 for stages 1 / 2 / 3 (0.43-0.44, 0.79-0.80, 0.81-0.82: CPUs and convolution
kernels round differently), in runs/demo/metrics.json.

Same architecture and labels as the paper, sized for a 128x128 input (16x16 belief maps) and a
2-core CPU: 3 stages (on these figures stages 4-6 add little: experiments/results/RESULTS.md,
section 1), narrower layers, 3x3 instead of 9x9 image-trunk kernels and 7x7 instead of 11x11 in
the later stages (three 7x7 layers already see the whole 16x16 map): receptive fields 125 / 269 /
413 input pixels by stage, 0.26 GFLOP per image forward (the paper's kernels and 4 stages: 0.82).
Adam instead of the release's SGD so that a few minutes suffice. `model.dtype = "auto"` (from the
paper config): float32 on a CPU, where bfloat16 learns as well but runs slower
(docs/performance.md); bfloat16 on a GPU or TPU.
"""
from cpm_jax import configs


def get_config():
    config = configs.paper_config(dataset="synthetic", num_stages=3)
    m = config.model
    m.input_size = 128
    m.trunk_kernel = 3
    m.stage_kernel = 7
    m.trunk_features = 16
    m.bottleneck_features = 16
    m.stage1_features = 32
    m.stage_features = 32
    m.dropout_rate = 0.1
    m.kernel_init = "he_normal"     # hidden layers; outputs keep the paper's N(0, 0.01)
    config.data.person_height = 0.9  # figures fill the crop: ~1 heatmap cell = PCK@0.2's radius
    config.data.num_heldout = 300
    config.optimizer = dict(name="adam", learning_rate=2e-3, warmup_steps=50, decay_steps=1500)
    t = config.training
    t.global_batch_size = 8
    t.num_steps = 1500
    t.log_every = 100
    t.checkpoint_every = 500
    t.keep_checkpoints = 2
    t.eval_batch_size = 50
    return config
