"""The paper's LSP model: 6 stages, 14 parts, 368x368 input, the release's optimiser.

    python -m cpm_jax.train --config experiments/lsp_paper.py --workdir DIR
"""
from cpm_jax import configs


def get_config():
    return configs.paper_config(dataset="lspet", num_stages=6)
