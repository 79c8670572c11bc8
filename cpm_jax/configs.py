"""Config defaults shared by the files in `experiments/`, and the checks every entry point runs.

Units: sizes in input pixels; learning rates per step; angles in degrees.
"""
import ml_collections

from cpm_jax.model import KERNEL_INITS


def paper_model(num_stages: int = 6, num_parts: int = 14, input_size: int = 368) -> ml_collections.ConfigDict:
    """The release's network (reference section 1)."""
    return ml_collections.ConfigDict(dict(
        num_stages=num_stages,
        num_parts=num_parts,
        input_size=input_size,       # square crop side, a multiple of 8
        trunk_kernel=9,
        trunk_features=128,
        bottleneck_features=32,      # the 5x5 conv of every stage
        stage1_kernel=9,
        stage1_features=512,
        stage_kernel=11,
        stage_features=128,
        dropout_rate=0.5,            # stage 1 only, training only
        kernel_init="paper_normal",  # convolutions followed by ReLU; one of model.KERNEL_INITS
        output_init="paper_normal",  # each stage's last (belief-map) convolution
        dtype="float32",             # compute dtype; "bfloat16" on accelerators
    ))


def paper_data(dataset: str) -> ml_collections.ConfigDict:
    """The release's augmentation (reference section 4) and labels (section 3)."""
    return ml_collections.ConfigDict(dict(
        dataset=dataset,             # a name in data_pipelines.registry.DATASETS
        person_height=0.64,          # canonical person height / input size (MPII: 1.171 * 200 / 368)
        scale_range=(0.7, 1.3),      # x U[a, b] on top of the canonical scale
        max_rotation=40.0,           # degrees, U[-r, r]
        flip_probability=0.5,
        target_sigma=7.0,            # input pixels
        center_sigma=21.0,           # input pixels
        num_heldout=500,             # examples scored at the end of training
        synthetic_image_size=160,    # canvas of the synthetic dataset, pixels
    ))


def paper_optimizer() -> ml_collections.ConfigDict:
    """The release's solver (reference section 2)."""
    return ml_collections.ConfigDict(dict(
        name="caffe_sgd",            # one of optimizers.OPTIMIZERS
        learning_rate=8e-5,
        momentum=0.9,
        weight_decay=5e-4,           # weights only, not biases
        stage1_multipliers=(5.0, 10.0),  # (weights, biases)
        other_multipliers=(1.0, 2.0),
        decay_every=136106,          # steps
        decay_factor=0.333,
    ))


def paper_config(dataset: str, num_stages: int = 6, num_parts: int = 14) -> ml_collections.ConfigDict:
    """A whole experiment with the release's settings."""
    return ml_collections.ConfigDict(dict(
        seed=0,
        model=paper_model(num_stages, num_parts),
        data=paper_data(dataset),
        optimizer=paper_optimizer(),
        loss=dict(intermediate_supervision=True),  # False: final stage only (paper ablation iv)
        training=dict(
            global_batch_size=16,
            num_steps=395_000,
            log_every=50,
            checkpoint_every=5_000,
            keep_checkpoints=3,
            eval_batch_size=16,
            num_visualized=6,
        ),
    ))


def validate(config: ml_collections.ConfigDict, known_datasets=None) -> None:
    """Raises ValueError naming the key for any value the code cannot honour."""
    m = config.model

    def check(ok: bool, key: str, value, want: str) -> None:
        if not ok:
            raise ValueError(f"config.{key} = {value!r}: {want}")

    check(isinstance(m.num_stages, int) and m.num_stages >= 1, "model.num_stages", m.num_stages,
          "must be an integer >= 1")
    check(isinstance(m.num_parts, int) and m.num_parts >= 1, "model.num_parts", m.num_parts,
          "must be an integer >= 1")
    check(isinstance(m.input_size, int) and m.input_size >= 8 and m.input_size % 8 == 0,
          "model.input_size", m.input_size, "must be a positive multiple of 8 (three stride-2 pools)")
    for key in ("trunk_kernel", "stage1_kernel", "stage_kernel", "trunk_features",
                "bottleneck_features", "stage1_features", "stage_features"):
        check(isinstance(m[key], int) and m[key] >= 1, f"model.{key}", m[key], "must be an integer >= 1")
    check(0.0 <= m.dropout_rate < 1.0, "model.dropout_rate", m.dropout_rate, "must be in [0, 1)")
    for key in ("kernel_init", "output_init"):
        check(m[key] in KERNEL_INITS, f"model.{key}", m[key], f"unknown; known: {', '.join(KERNEL_INITS)}")
    if known_datasets is not None:
        check(config.data.dataset in known_datasets, "data.dataset", config.data.dataset,
              f"unknown dataset; known: {', '.join(sorted(known_datasets))}")
    if "training" in config:
        t = config.training
        check(t.global_batch_size >= 1, "training.global_batch_size", t.global_batch_size, "must be >= 1")
        check(t.num_steps >= 1, "training.num_steps", t.num_steps, "must be >= 1")
        check(t.checkpoint_every >= 1, "training.checkpoint_every", t.checkpoint_every, "must be >= 1")
        d = config.data
        lo, hi = d.scale_range
        check(0 < lo <= hi, "data.scale_range", tuple(d.scale_range), "must satisfy 0 < low <= high")
        check(0.0 <= d.flip_probability <= 1.0, "data.flip_probability", d.flip_probability,
              "must be in [0, 1]")
