"""The paper's LSP model: 6 stages, 14 parts, 368x368 input, the release's optimiser, trained on
the paper's LSP training set (LSPET + LSP 1-1000), scored on LSP 1001-2000.

    python -m cpm_jax.train --config experiments/lsp_paper.py --workdir DIR \
        --config.data.paths.lsp=/data/lsp_dataset --config.data.paths.lspet=/data/lspet_dataset
"""
from cpm_jax import configs


def get_config():
    return configs.paper_config(dataset="lsp+lspet", num_stages=6)
