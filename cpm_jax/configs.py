"""Config defaults shared by the files in `experiments/`, and the checks every entry point runs.

Units: sizes in input pixels; learning rates per step; angles in degrees.
"""
import ml_collections

from cpm_jax import errors
from cpm_jax.model.architecture import AUTO_DTYPE, KERNEL_INIT_NAMES, auto_dtype, stage_parameter_groups

DTYPES = ("float32", "bfloat16", "float16")  # model.dtype: the compute dtype
NONFINITE = ("stop", "skip")                  # training.nonfinite: what a non-finite step does
SCHEMES = ("joint", "stagewise", "joint_from_stagewise")  # training.scheme (schemes.run)


def paper_model(num_stages: int = 6, num_parts: int = 14, input_size: int = 368) -> ml_collections.ConfigDict:
    """The release's network (docs/paper_notes.md section 1)."""
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
        # Compute dtype of convolutions and activations (parameters, optimiser state and loss stay
        # float32): "float32", "bfloat16", "float16", or "auto": bfloat16 on a GPU or TPU, float32
        # on a CPU (where bfloat16 convolutions are slow), fixed when the run starts by
        # `resolve_dtype(config, jax.default_backend())`.
        dtype=AUTO_DTYPE,
    ))


def paper_data(dataset: str) -> ml_collections.ConfigDict:
    """The release's augmentation and labels (docs/paper_notes.md sections 4 and 3)."""
    return ml_collections.ConfigDict(dict(
        dataset=dataset,             # a name in data_pipelines.registry.DATASETS
        source="files",              # "files": official layout under `paths`; "tfds": a TFDS build
        paths=dict(lsp="", lspet="", mpii="", flic=""),  # dataset directories (official layout)
        tfds_data_dir="",            # where `python -m data_pipelines.build_tfds` wrote the builds
        mpii_validation_file="",     # Tompson et al.'s detections.mat: the 2,958-person `valid` split
        skip_bad_examples=False,     # True: skip and count unusable examples instead of stopping
        # With skip_bad_examples: stop (naming the data and the first bad files) once more than
        # this fraction of an epoch's examples are bad, and always when an epoch has none usable.
        max_skipped_fraction=0.1,
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
        # Datasets with a "heldout" split (lspet): the people whose 0-based index is a multiple
        # of K form it and leave "train" (K = 10: 1,000 of LSPET's 10,000); 0 = no held-out split.
        heldout_every=0,
        synthetic_image_size=160,    # canvas of the synthetic dataset, pixels
        # Which figures the synthetic dataset draws: example i of a split is rendered from
        # (synthetic_seed, split, i), so runs with the same seed see the same figures.
        synthetic_seed=0,
    ))


def paper_optimizer() -> ml_collections.ConfigDict:
    """The release's solver (docs/paper_notes.md section 2)."""
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
            eval_every=0,            # steps between held-out evaluations; 0: only at the end
            # Steps per period of gradient-magnitude histograms (paper Figure 5; gradients.py:
            # <workdir>/gradients.npz and gradients.png); 0 = off.
            gradient_histogram_every=0,
            eval_batch_size=16,
            num_visualized=6,
            # A step whose loss or gradient is not finite (inf/NaN) is never applied. "stop": end
            # the run naming the step and stage(s) (the newest checkpoint holds no bad state);
            # "skip": go on without that update, counting and logging the skipped steps.
            nonfinite="stop",
            # How the stages are trained (schemes.run): "joint" (all together), "stagewise"
            # (stage 1, then stage 2 with stage 1 frozen, ...), "joint_from_stagewise".
            scheme="joint",
            # A workdir whose newest checkpoint's parameters initialise the collections this
            # model shares with it ("stage1", "trunk", "stage2", ...), or a shipped model
            # ("pretrained:lspet_cpu" or a path to its .npz); only at step 0.
            init_from="",
            # Top-level parameter collections that get no update and no optimiser state.
            frozen=(),
        ),
    ))


def resolve_dtype(config: ml_collections.ConfigDict, backend: str) -> ml_collections.ConfigDict:
    """`config` with `model.dtype = "auto"` replaced by `auto_dtype(backend)`; any other value is
    kept. Mutates and returns `config`. The training loop calls it before writing config.json, so
    that the run records the dtype it computed in (model.CPM resolves "auto" the same way when
    given an unresolved config)."""
    if config.model.get("dtype", "float32") == AUTO_DTYPE:
        config.model.dtype = auto_dtype(backend)
    return config


def validate(config: ml_collections.ConfigDict, known_datasets=None, splits=None) -> None:
    """Raises `errors.ConfigError` naming the key, the value and what is allowed, for any value
    the code cannot honour: `config.model.input_size = 30: must be a positive multiple of 8 ...`.

    `known_datasets`: name -> object with `num_parts` (data_pipelines.registry.DATASETS); None
    skips the data checks (model-only tools such as `summary`). With the registry, the files
    the `splits` read (default: every split of the dataset; training reads "train" and scores
    the evaluation split) must be set and exist (`registry.check_files`): a missing path fails
    at once, before any JAX or TensorFlow work."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise errors.ConfigError(f"the config is a {type(config).__name__}, not an ml_collections.ConfigDict "
                                 "(a config file's get_config() starts from configs.paper_config(...))")
    for section in ("model",) + (("data",) if known_datasets is not None or "training" in config else ()):
        if not isinstance(config.get(section), ml_collections.ConfigDict):
            raise errors.ConfigError(f"config.{section} is missing (configs.paper_config(...) has every section)")

    def check(ok, key: str, value, want: str) -> None:
        """`ok`: a bool, or a function of no arguments; one that fails on the value's type is False."""
        if callable(ok):
            try:
                ok = ok()
            except (TypeError, ValueError, IndexError, KeyError, AttributeError):
                ok = False
        if not ok:
            raise errors.ConfigError(f"config.{key} = {value!r}: {want}")

    def integer(value, low: int = 1) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    m = config.model
    check(integer(m.get("num_stages")), "model.num_stages", m.get("num_stages"), "must be an integer >= 1")
    check(integer(m.get("num_parts")), "model.num_parts", m.get("num_parts"), "must be an integer >= 1")
    check(integer(m.get("input_size"), 8) and m.input_size % 8 == 0, "model.input_size", m.get("input_size"),
          "must be a positive multiple of 8 (three stride-2 pools)")
    for key in ("trunk_kernel", "stage1_kernel", "stage_kernel", "trunk_features",
                "bottleneck_features", "stage1_features", "stage_features"):
        check(integer(m.get(key)), f"model.{key}", m.get(key), "must be an integer >= 1")
    check(lambda: 0.0 <= m.dropout_rate < 1.0, "model.dropout_rate", m.get("dropout_rate"), "must be in [0, 1)")
    for key in ("kernel_init", "output_init"):
        check(m.get(key) in KERNEL_INIT_NAMES, f"model.{key}", m.get(key), f"unknown; known: {', '.join(KERNEL_INIT_NAMES)}")
    check(m.get("dtype", "float32") in DTYPES + (AUTO_DTYPE,), "model.dtype", m.get("dtype"),
          f"must be one of {', '.join(DTYPES + (AUTO_DTYPE,))}")
    if known_datasets is not None:
        from data_pipelines import registry  # no TensorFlow; here so that configs imports only ml_collections
        d = config.data
        check(d.get("dataset") in known_datasets, "data.dataset", d.get("dataset"),
              f"unknown dataset; known: {', '.join(sorted(known_datasets))}")
        dataset = known_datasets[d.dataset]
        check(m.num_parts == dataset.num_parts, "model.num_parts", m.num_parts,
              f"dataset {d.dataset!r} has {dataset.num_parts} parts")
        check(d.get("source", "files") in registry.SOURCE_KINDS, "data.source", d.get("source"),
              f"must be one of {', '.join(map(repr, registry.SOURCE_KINDS))}")
        check(not d.get("eval_split") or d.eval_split in dataset.splits, "data.eval_split", d.get("eval_split"),
              f"dataset {d.dataset!r} has splits {', '.join(dataset.splits)}")
        check(lambda: dataset.read is not None or d.num_heldout >= 1, "data.num_heldout", d.get("num_heldout"),
              "must be >= 1 for an endless (synthetic) dataset")
        every = d.get("heldout_every", 0)
        check(integer(every, 0), "data.heldout_every", every, "must be an integer >= 0 (0: no held-out split)")
        check(not every or (dataset.read is not None and "heldout" in dataset.splits), "data.heldout_every", every,
              f"dataset {d.dataset!r} has no held-out split to set aside (lspet has)")
        check(not every or d.get("source", "files") == "files", "data.heldout_every", every,
              "needs data.source='files' (a TFDS build holds the whole training split)")
        check(d.get("eval_split") != "heldout" or every or dataset.read is None, "data.eval_split", "heldout",
              "needs data.heldout_every >= 1 (which people to hold out)")
        check(lambda: 0.0 <= float(d.get("max_skipped_fraction", 0.1)) <= 1.0
              and not isinstance(d.get("max_skipped_fraction", 0.1), bool),
              "data.max_skipped_fraction", d.get("max_skipped_fraction"),
              "must be a fraction in [0, 1] (of an epoch's examples)")
        if getattr(dataset, "files", None):
            registry.check_files(d, splits, dataset)
    if "training" in config:
        t = config.training
        for key in ("global_batch_size", "num_steps", "checkpoint_every"):
            check(integer(t.get(key)), f"training.{key}", t.get(key), "must be an integer >= 1")
        check(integer(t.get("gradient_histogram_every", 0), 0), "training.gradient_histogram_every",
              t.get("gradient_histogram_every"), "must be an integer >= 0 (steps per histogram period; 0 = off)")
        check(t.get("nonfinite", "stop") in NONFINITE, "training.nonfinite", t.get("nonfinite"),
              f"must be one of {', '.join(map(repr, NONFINITE))}")
        check(t.get("scheme", "joint") in SCHEMES, "training.scheme", t.get("scheme"),
              f"must be one of {', '.join(map(repr, SCHEMES))}")
        check(t.get("scheme", "joint") == "joint" or t.num_steps >= m.num_stages, "training.num_steps",
              t.num_steps, f"must be >= model.num_stages = {m.num_stages} (training.scheme = {t.get('scheme')!r} "
              "gives each stage num_steps // num_stages steps)")
        check(isinstance(t.get("init_from", ""), str), "training.init_from", t.get("init_from"),
              "must be a workdir path, \"pretrained:NAME\" or a .npz path (a string; \"\" for none)")
        collections = [name for group in stage_parameter_groups(m.num_stages) for name in group]
        check(lambda: all(name in collections for name in t.get("frozen", ()))
              and not isinstance(t.get("frozen", ()), str),
              "training.frozen", t.get("frozen"), f"must be parameter collections of this model: {', '.join(collections)}")
        for key, empty in (("init_from", ""), ("frozen", ())):
            check(t.get("scheme", "joint") == "joint" or not t.get(key, empty), f"training.{key}", t.get(key),
                  f"must be empty with training.scheme = {t.get('scheme')!r} (its phases set it)")
        d = config.data
        check(lambda: len(d.scale_range) == 2 and 0 < d.scale_range[0] <= d.scale_range[1], "data.scale_range",
              tuple(d.get("scale_range") or ()), "must be (low, high) with 0 < low <= high")
        check(lambda: 0.0 <= d.flip_probability <= 1.0, "data.flip_probability", d.get("flip_probability"),
              "must be in [0, 1]")
        check(lambda: d.max_rotation >= 0, "data.max_rotation", d.get("max_rotation"), "must be >= 0 (degrees)")
        check(lambda: d.person_height > 0, "data.person_height", d.get("person_height"), "must be > 0")
        check(lambda: d.target_sigma > 0, "data.target_sigma", d.get("target_sigma"), "must be > 0 (input pixels)")
