"""A CPM trained on real photographs on a 2-core CPU: LSP Extended minus 1,000 held-out people.

    python -m cpm_jax.train --config experiments/lspet_cpu.py --workdir runs/lspet_cpu \
        [--config.data.paths.lspet=/data/lspet_dataset]

This is the shipped model (pretrained/lspet_cpu, `python -m cpm_jax.pretrained export --workdir
runs/lspet_cpu --name lspet_cpu`). Machine and time: 2 CPU cores (Intel Xeon Sapphire Rapids,
2.6 GHz) with the CPU backend, 55-58 img/s on a quiet machine: about 2 hours (112 minutes of
steps, 24 held-out evaluations of 10 s). Stopped, the same command resumes from the workdir.
Expected result, held-out PCK@0.2 of stages 1-4 (experiments/results/RESULTS.md, section 3):
0.346 / 0.422 / 0.452 / 0.462, against 0.044 for the mean pose of the training crops
(`python -m cpm_jax.evaluate mean_pose --config experiments/lspet_cpu.py`); the paper's
multi-scale test (`python -m cpm_jax.evaluate run --pretrained lspet_cpu`) gives 0.479 at stage 4.

The paper's architecture and labels (14 parts + background, Gaussian targets of 7 input px,
intermediate supervision of every stage, the release's augmentation: scale x U[0.7, 1.3],
rotation U[-40, 40] degrees, flips with left/right swap) at the size this CPU affords:

- 128x128 input (16x16 belief maps) rather than 184: LSPET's people are small (median scale 142
  px, images ~150-400 px), the canonical zoom already shrinks most of them, and 184 would cost
  2x the compute per image for half the updates in the same hours.
- 4 stages: the paper's gain from more stages is mostly in stages 2-3 (Figure 6c), and every
  stage past 1 costs as much as stage 1's belief head here.
- 5x5 image-trunk kernels and 32 channels in both trunks and the stages (the paper: 9x9, 128;
  the demo: 5x5, 16): 1.6 M parameters, 1.45 GFLOP forward per image.

Recipe for a budget of about two hours (the release's SGD at 8e-5 needs ~400k steps from a VGG
initialisation). `python -m cpm_jax.bench --config experiments/lspet_cpu.py --parts
train,fed,pipeline` measures 57 img/s for the bare step, 51 fed by the pipeline and 510 for the
pipeline alone: the step bounds training, and two hours buy 24,000 steps of batch 16 (the
release's batch), 43 epochs of the 9,000 training people. The earlier 9,000-step model was
still gaining a point of held-out PCK per 1,000 steps when it stopped, and its second cosine
cycle spent 1,000 steps recovering from the restart; hence one cycle, all of it spent on
updates: Adam at 1e-3, 300 warm-up steps, a cosine decay to 1% at the last step. The same
width and input size: the curve said under-trained, not under-sized. He initialisation of
hidden layers (the outputs keep the paper's N(0, 0.01)), no dropout (the model underfits:
augmentation is regularisation enough). The held-out people are those whose 0-based index in
joints.mat is a multiple of 10 (data.heldout_every: 0, 10, ..., 9990), never seen in training;
every stage is scored on all 1,000 of them every 1,000 steps (PCK@0.2, torso-normalised,
labelled joints only).
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
    config.optimizer = dict(name="adam", learning_rate=1e-3, warmup_steps=300, decay_steps=24000)
    t = config.training
    t.global_batch_size = 16
    t.num_steps = 24000
    t.log_every = 100
    t.eval_every = 1000
    t.checkpoint_every = 500
    t.keep_checkpoints = 2
    t.eval_batch_size = 50
    t.num_visualized = 8
    return config
