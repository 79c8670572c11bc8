"""The paper's MPII model: 6 stages, 14 parts (pelvis and thorax dropped), 368x368 input, the
release's optimiser; stage 1 learns every annotated person, later stages the centred one.

    python -m cpm_jax.train --config experiments/mpii_paper.py --workdir DIR \
        --config.data.paths.mpii=/data/mpii \
        --config.data.mpii_validation_file=/data/mpii/detections.mat

Both are required (the validation people are left out of training and scored at the end); a
path not given or not found fails at once, naming its key. Computes in bfloat16 on a GPU or TPU,
float32 on a CPU (`model.dtype = "auto"`).

Machine and time: not yet run to the end with this code. The release trained it on one GPU:
630,000 steps of batch 16 (10 M crops), an estimated 7-14 hours on one H100-class GPU in
bfloat16 (docs/paper_notes.md section 8); out of reach on a CPU (about 16 s per step of batch 8
on a 2-core AMD EPYC Zen 4). Expected result (the paper, section 4.2 and figure 8): PCKh@0.5 of
87.95 on MPII's test set, whose labels are not public; this config scores the 2,958 validation
people (Tompson et al.), a split the paper does not report.
"""
from cpm_jax import configs


def get_config():
    config = configs.paper_config(dataset="mpii", num_stages=6)
    config.training.num_steps = 630_000
    return config
