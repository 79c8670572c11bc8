"""The paper's FLIC model: 4 stages, 9 parts, 368x368 input, the release's optimiser.

    python -m cpm_jax.train --config experiments/flic_paper.py --workdir DIR --config.data.paths.flic=/data/FLIC

A path not given or not found fails at once, naming its key. Computes in bfloat16 on a GPU or
TPU, float32 on a CPU (`model.dtype = "auto"`).

Machine and time: not yet run to the end with this code. The release trained it for 40,000 steps
of batch 16 (640,000 crops) on one GPU; with 4 stages instead of 6 that is an estimated hour or
less on one H100-class GPU in bfloat16 (docs/paper_notes.md section 8), and about two weeks on a
2-core CPU. Expected result (the paper, section 4.2 and figure 12): PCK@0.2 of 97.59 for elbows
and 95.03 for wrists on FLIC's 1016 test examples (docs/paper_notes.md section 6).
"""
from cpm_jax import configs


def get_config():
    config = configs.paper_config(dataset="flic", num_stages=4, num_parts=9)
    config.training.num_steps = 40_000
    return config
