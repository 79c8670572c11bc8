"""The demo: a tiny CPM learns the embedded synthetic figures on a CPU in minutes.

    python -m cpm_jax.train --config experiments/synthetic.py --workdir runs/demo

Same architecture and labels as the paper, sized for a 128x128 input (16x16 belief maps) and a
2-core CPU: 3 stages (on these figures stages 4-6 add little: experiments/results, section 1),
narrower layers, 3x3 instead of 9x9 image-trunk kernels and 7x7 instead of 11x11 in the later
stages (three 7x7 layers already see the whole 16x16 map): receptive fields 125 / 269 / 413 input
pixels by stage, 0.26 GFLOP per image forward (the paper's kernels and 4 stages: 0.82). Adam
instead of the release's SGD so that a few minutes suffice. `model.dtype = "auto"` (from the
paper config): float32 on a CPU, bfloat16 on a GPU or TPU. Measured here (2 shared CPU cores, 500
steps, the 4-stage 11x11 model): bfloat16's loss follows float32's within the step-to-step noise
(57.1 vs 55.4 at step 500; held-out PCK@0.2 of the last stage 0.629 vs 0.633), at 0.6x the
speed, hence float32 on CPUs.
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
    # 1500 steps, held-out PCK@0.2 by stage: 0.44 / 0.80 / 0.82; `make demo` (venv included) took
    # 5m20s on a fresh clone on a 2-core AMD EPYC Zen 3 (1m09s of it the venv; 56 img/s). Before, 4 stages with 5x5 trunk
    # kernels: 0.54 / 0.78 / 0.79 / 0.83 with 7x7 later-stage kernels (8m15s on that Zen 3), and
    # 0.53 / 0.80 / 0.81 / 0.84 with the paper's 11x11 (1300 steps 0.51 / 0.79 / 0.80 / 0.82, 2000
    # steps 0.62 / 0.82 / 0.84 / 0.88; 8m54s on a 2-core Xeon Sapphire Rapids, 22 img/s on the Zen 3).
    t.num_steps = 1500
    t.log_every = 100
    t.checkpoint_every = 500
    t.keep_checkpoints = 2
    t.eval_batch_size = 50
    return config
