"""A CPM trained on real photographs on a 2-core CPU: LSP Extended minus 1,000 held-out people.

    python -m cpm_jax.train --config experiments/lspet_cpu.py --workdir runs/lspet_cpu \
        [--config.data.paths.lspet=/data/lspet_dataset]

The shipped model (pretrained/lspet_cpu) is this config's 5,000 steps followed by a second
cosine cycle of 4,000 steps started from their parameters:

    python -m cpm_jax.train --config experiments/lspet_cpu.py --workdir runs/lspet_cpu2 \
        --config.training.init_from=runs/lspet_cpu --config.training.num_steps=4000 \
        --config.optimizer.learning_rate=5e-4 --config.optimizer.warmup_steps=200 \
        --config.optimizer.decay_steps=4000

Machine and time: 2 CPU cores (Intel Xeon Sapphire Rapids, 2.6 GHz), 18-24 img/s: 73 minutes for
this config, 49 for the second cycle, two hours in all. Expected result, held-out PCK@0.2 of
stages 1-4 (experiments/results/RESULTS.md, section 3): after this config alone about 0.21 at
stage 1 and 0.31 at stage 4; after both cycles (the shipped model) 0.237 / 0.327 / 0.351 / 0.372,
against 0.044 for the mean pose of the training crops (`python -m cpm_jax.evaluate mean_pose
--config experiments/lspet_cpu.py`); the paper's multi-scale test (`evaluate run`) gives 0.387 at
stage 4.

The paper's architecture and labels (14 parts + background, Gaussian targets of 7 input px,
intermediate supervision of every stage, the release's augmentation: scale x U[0.7, 1.3],
rotation U[-40, 40] degrees, flips with left/right swap) at the size this CPU affords:

- 128x128 input (16x16 belief maps) rather than 184: LSPET's people are small (median scale 142
  px, images ~150-400 px), the canonical zoom already shrinks most of them, and 184 would cost
  2x the compute per image for fewer epochs in the same hours.
- 4 stages: the paper's gain from more stages is mostly in stages 2-3 (Figure 6c), and every
  stage past 1 costs as much as stage 1's belief head here.
- 5x5 image-trunk kernels and 32 channels in both trunks and the stages (the paper: 9x9, 128;
  the demo: 5x5, 16): twice the demo's trunk width, since real photos need richer local features
  than drawn figures; 1.6 M parameters, 1.45 GFLOP forward per image.

Recipe for a budget of about two hours (the release's SGD at 8e-5 needs ~400k steps from a VGG
initialisation): Adam at 1e-3 with 300 warm-up steps and a cosine decay to 1% at the last step,
batch 16, He initialisation of hidden layers (the outputs keep the paper's N(0, 0.01)), no
dropout (in a few epochs the model underfits: augmentation is regularisation enough).
The held-out people are those whose 0-based index in joints.mat is a multiple of 10
(data.heldout_every: 0, 10, ..., 9990), never seen in training; every stage is scored on all
1,000 of them every 1,000 steps (PCK@0.2, torso-normalised, labelled joints only).
"""
from cpm_jax import configs


def get_config():
    config = configs.paper_config(dataset="lspet", num_stages=4)
    m = config.model
    m.input_size = 128
    m.trunk_kernel = 5
    m.trunk_features = 32
    m.bottleneck_features = 32
    m.stage1_features = 32
    m.stage_features = 32
    m.dropout_rate = 0.0
    m.kernel_init = "he_normal"
    d = config.data
    d.paths.lspet = "../shared/datasets/lspet"
    d.heldout_every = 10
    d.eval_split = "heldout"
    d.num_heldout = 0                 # all 1,000 held-out people
    config.optimizer = dict(name="adam", learning_rate=1e-3, warmup_steps=300, decay_steps=5000)
    t = config.training
    t.global_batch_size = 16
    t.num_steps = 5000
    t.log_every = 100
    t.eval_every = 1000
    t.checkpoint_every = 500
    t.keep_checkpoints = 2
    t.eval_batch_size = 50
    t.num_visualized = 8
    return config
