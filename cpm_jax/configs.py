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
        source="files",              # "files": official layout under `paths`; "tfds": a TFDS build
        paths=dict(lsp="", lspet="", mpii="", flic=""),  # dataset directories (official layout)
        tfds_data_dir="",            # where `python -m data_pipelines.build_tfds` wrote the builds
        mpii_validation_file="",     # Tompson et al.'s detections.mat: the 2,958-person `valid` split
        skip_bad_examples=False,     # True: skip and count unusable examples instead of stopping
        eval_split="",               # scored after training; "" = the dataset's (test, valid, ...)
        # Canonical person size / input size: the release's target_dist 41/35 at 200 px per MPII
        # scale unit, 368 px input (records' `scale` is 200 x that unit).
        person_height=41 / 35 * 200 / 368,
        scale_range=(0.7, 1.3),      # x U[a, b] on top of the canonical scale
        max_rotation=40.0,           # degrees, U[-r, r]
        flip_probability=0.5,
        target_sigma=7.0,            # input pixels
        center_sigma=21.0,           # input pixels
        num_heldout=0,               # examples scored at the end of training; 0 = the whole split
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
    """Raises ValueError naming the key for any value the code cannot honour.

    `known_datasets`: name -> object with `num_parts` (data_pipelines.registry.DATASETS); None
    skips the data checks (model-only tools such as `summary`)."""
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
        d = config.data
        check(d.dataset in known_datasets, "data.dataset", d.dataset,
              f"unknown dataset; known: {', '.join(sorted(known_datasets))}")
        dataset = known_datasets[d.dataset]
        check(m.num_parts == dataset.num_parts, "model.num_parts", m.num_parts,
              f"dataset {d.dataset!r} has {dataset.num_parts} parts")
        check(d.get("source", "files") in ("files", "tfds"), "data.source", d.get("source"),
              "must be 'files' or 'tfds'")
        check(not d.get("eval_split") or d.eval_split in dataset.splits, "data.eval_split", d.get("eval_split"),
              f"dataset {d.dataset!r} has splits {', '.join(dataset.splits)}")
        check(dataset.read is not None or d.num_heldout >= 1, "data.num_heldout", d.num_heldout,
              "must be >= 1 for an endless (synthetic) dataset")
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
        check(d.max_rotation >= 0, "data.max_rotation", d.max_rotation, "must be >= 0 (degrees)")
        check(d.person_height > 0, "data.person_height", d.person_height, "must be > 0")
        check(d.target_sigma > 0, "data.target_sigma", d.target_sigma, "must be > 0 (input pixels)")
