"""The paper's MPII model: 6 stages, 14 parts (pelvis and thorax dropped), 368x368 input, the
release's optimiser; stage 1 learns every annotated person, later stages the centred one.

    python -m cpm_jax.train --config experiments/mpii_paper.py --workdir DIR \
        --config.data.paths.mpii=/data/mpii \
        --config.data.mpii_validation_file=/data/mpii/detections.mat

Both are required (the validation people are left out of training and scored at the end); a
path not given or not found fails at once, naming its key. Computes in bfloat16 on a GPU or TPU,
float32 on a CPU (`model.dtype = "auto"`).
"""
from cpm_jax import configs


def get_config():
    config = configs.paper_config(dataset="mpii", num_stages=6)
    config.training.num_steps = 630_000
    return config
