"""The paper's FLIC model: 4 stages, 9 parts, 368x368 input, the release's optimiser.

    python -m cpm_jax.train --config experiments/flic_paper.py --workdir DIR --config.data.paths.flic=/data/FLIC

A path not given or not found fails at once, naming its key. Computes in bfloat16 on a GPU or
TPU, float32 on a CPU (`model.dtype = "auto"`).
"""
from cpm_jax import configs


def get_config():
    config = configs.paper_config(dataset="flic", num_stages=4, num_parts=9)
    config.training.num_steps = 40_000
    return config
