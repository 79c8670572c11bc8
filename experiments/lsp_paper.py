"""The paper's LSP model: 6 stages, 14 parts, 368x368 input, the release's optimiser, trained on
the paper's LSP training set (LSPET + LSP 1-1000), scored on LSP 1001-2000.

    python -m cpm_jax.train --config experiments/lsp_paper.py --workdir DIR \
        --config.data.paths.lsp=/data/lsp_dataset --config.data.paths.lspet=/data/lspet_dataset

Both folders are required (LSPET and LSP 1-1000 for training, LSP 1001-2000 for the score at the
end); a path not given or not found fails at once, naming its key. Computes in bfloat16 on a GPU
or TPU, float32 on a CPU (`model.dtype = "auto"`; `--config.model.dtype=float32` to choose).

Machine and time: not yet run to the end with this code. The release trained it on one GPU:
395,000 steps of batch 16 (6.3 M crops); at the few hundred images/s one H100-class GPU should
reach in bfloat16 that is an estimated 4-9 hours (docs/paper_notes.md section 8). On a 2-core
AMD EPYC Zen 4 CPU one step of batch 8 takes about 16 s (README, Performance): months for the
whole run. Expected result (the paper, section 4.2): LSP PCK@0.2 of 84.32 on images 1001-2000
(`python -m cpm_jax.evaluate run --workdir DIR`; docs/paper_notes.md section 6).
"""
from cpm_jax import configs


def get_config():
    return configs.paper_config(dataset="lsp+lspet", num_stages=6)
