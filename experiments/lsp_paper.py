"""The paper's LSP model: 6 stages, 14 parts, 368x368 input, the release's optimiser, trained on
the paper's LSP training set (LSPET + LSP 1-1000), scored on LSP 1001-2000.

    python -m cpm_jax.train --config experiments/lsp_paper.py --workdir DIR \
        --config.data.paths.lsp=/data/lsp_dataset --config.data.paths.lspet=/data/lspet_dataset

Both folders are required (LSPET and LSP 1-1000 for training, LSP 1001-2000 for the score at the
end); a path not given or not found fails at once, naming its key. Computes in bfloat16 on a GPU
or TPU, float32 on a CPU (`model.dtype = "auto"`; `--config.model.dtype=float32` to choose).
"""
from cpm_jax import configs


def get_config():
    return configs.paper_config(dataset="lsp+lspet", num_stages=6)
