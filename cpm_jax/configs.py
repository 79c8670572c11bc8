"""Config defaults shared by the files in `experiments/`, and the checks every entry point runs.

Units: sizes in input pixels; learning rates per step; angles in degrees.
"""
import math

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


REQUIRED = object()  # in NUMBERS: a key the code reads without a default, so it must be there
# optimizer.name -> the keys its optimiser reads (training/optimizers.py; tests check the names).
OPTIMIZER_KEYS = {
    "caffe_sgd": ("learning_rate", "momentum", "weight_decay", "stage1_multipliers", "other_multipliers",
                  "decay_every", "decay_factor"),
    "adam": ("learning_rate", "warmup_steps", "decay_steps"),
}


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(low: int, note: str = ""):
    return (lambda v: _is_integer(v) and v >= low), f"must be an integer >= {low}{note}"


def _number(low: float, high: float = math.inf, shape: str = "[]", note: str = ""):
    """A finite number between `low` and `high`; `shape`: which ends are allowed ("[)": low, not high)."""
    def ok(v) -> bool:
        return (_is_number(v) and (low <= v if shape[0] == "[" else low < v)
                and (v <= high if shape[1] == "]" else v < high))
    if high == math.inf:
        return ok, f"must be a number {'>=' if shape[0] == '[' else '>'} {low:g}{note}"
    return ok, f"must be a number in {shape[0]}{low:g}, {high:g}{shape[1]}{note}"


def _pair(test, want: str):
    return (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and test(v[0], v[1])), want


SWITCH = ((lambda v: isinstance(v, bool)), "must be True or False (a bool)")
MULTIPLIERS = _pair(lambda w, b: _number(0)[0](w) and _number(0)[0](b), "must be (weights, biases), two numbers >= 0")
# Every number and switch of a config: key, the value the code uses when it is absent (REQUIRED:
# none), (test, what is allowed). `validate` checks those of every section the config has (of
# optimizer, the keys OPTIMIZER_KEYS gives for its name).
NUMBERS = (
    ("seed", REQUIRED, _integer(0)),
    *((f"model.{key}", REQUIRED, _integer(1)) for key in (
        "num_stages", "num_parts", "trunk_kernel", "stage1_kernel", "stage_kernel", "trunk_features",
        "bottleneck_features", "stage1_features", "stage_features")),
    ("model.dropout_rate", REQUIRED, _number(0, 1, "[)")),
    ("data.skip_bad_examples", False, SWITCH),
    ("data.max_skipped_fraction", 0.1, (_number(0, 1)[0], "must be a fraction in [0, 1] (of an epoch's examples)")),
    ("data.person_height", REQUIRED, _number(0, shape="()", note=" (of the input size)")),
    ("data.scale_range", REQUIRED, _pair(lambda low, high: _number(0, shape="()")[0](low) and _is_number(high)
                                         and low <= high, "must be (low, high) with 0 < low <= high")),
    ("data.max_rotation", REQUIRED, _number(0, 180, note=" (degrees)")),
    ("data.flip_probability", REQUIRED, _number(0, 1)),
    ("data.target_sigma", REQUIRED, _number(0, shape="()", note=" (input pixels)")),
    ("data.center_sigma", 21.0, _number(0, shape="()", note=" (input pixels)")),
    ("data.num_heldout", 0, _integer(0, " (0: the whole split)")),
    ("data.heldout_every", 0, _integer(0, " (0: no held-out split)")),
    ("data.synthetic_image_size", 160, _integer(32, " (pixels: the synthetic figures' smallest canvas)")),
    ("data.synthetic_seed", 0, _integer(0)),
    ("loss.intermediate_supervision", True, SWITCH),
    ("optimizer.learning_rate", REQUIRED, _number(0, shape="()")),
    ("optimizer.momentum", REQUIRED, _number(0, 1, "[)")),
    ("optimizer.weight_decay", REQUIRED, _number(0)),
    ("optimizer.stage1_multipliers", REQUIRED, MULTIPLIERS),
    ("optimizer.other_multipliers", REQUIRED, MULTIPLIERS),
    ("optimizer.decay_every", REQUIRED, _integer(1, " (steps)")),
    ("optimizer.decay_factor", REQUIRED, _number(0, 1, "(]")),
    ("optimizer.warmup_steps", REQUIRED, _integer(0, " (steps)")),
    ("optimizer.decay_steps", REQUIRED, _integer(1, " (steps)")),
    ("training.global_batch_size", REQUIRED, _integer(1)),
    ("training.num_steps", REQUIRED, _integer(1)),
    ("training.eval_batch_size", REQUIRED, _integer(1)),
    ("training.log_every", REQUIRED, _integer(1, " (steps between log lines)")),
    ("training.checkpoint_every", REQUIRED, _integer(1)),
    ("training.keep_checkpoints", REQUIRED, _integer(1, " (0 would keep no checkpoint to resume from)")),
    ("training.eval_every", REQUIRED, _integer(0, " (steps between held-out evaluations; 0: only at the end)")),
    ("training.gradient_histogram_every", 0, _integer(0, " (steps per histogram period; 0 = off)")),
    ("training.num_visualized", REQUIRED, _integer(1, " (crops drawn in skeletons.png)")),
)


def _check_numbers(config: ml_collections.ConfigDict, check) -> None:
    """NUMBERS, for the sections `config` has; the optimiser's keys by its name."""
    optimizer = config.get("optimizer")
    if isinstance(optimizer, ml_collections.ConfigDict):
        check(optimizer.get("name") in OPTIMIZER_KEYS, "optimizer.name", optimizer.get("name"),
              f"unknown; known: {', '.join(OPTIMIZER_KEYS)}")
    for key, default, (ok, want) in NUMBERS:
        section, _, name = key.rpartition(".")
        node = config.get(section) if section else config
        if not isinstance(node, ml_collections.ConfigDict):
            continue
        if section == "optimizer" and name not in OPTIMIZER_KEYS[node.name]:
            continue
        value = node.get(name, None if default is REQUIRED else default)
        check(ok(value), key, tuple(value) if isinstance(value, list) else value, want)
    if isinstance(optimizer, ml_collections.ConfigDict) and optimizer.name == "adam":
        check(optimizer.decay_steps > optimizer.warmup_steps, "optimizer.decay_steps", optimizer.decay_steps,
              f"must be > optimizer.warmup_steps = {optimizer.warmup_steps} (the cosine decay ends at "
              "decay_steps, warm-up included)")


def validate(config: ml_collections.ConfigDict, known_datasets=None, splits=None) -> None:
    """Raises `errors.ConfigError` naming the key, the value and what is allowed, for any value
    the code cannot honour: `config.model.input_size = 30: must be a positive multiple of 8 ...`.

    `known_datasets`: name -> object with `num_parts` (data_pipelines.registry.DATASETS); None
    skips the data checks (model-only tools such as `summary`). With the registry, the files
    the `splits` read (default: every split of the dataset; training reads "train" and scores
    the evaluation split) must be set and exist (`registry.check_files`): a missing path fails
    at once, before any JAX or TensorFlow work. Every number and switch of the sections the config
    has is checked for its type and range (NUMBERS): `config.training.log_every = 0: must be an
    integer >= 1 ...`."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise errors.ConfigError(f"the config is a {type(config).__name__}, not an ml_collections.ConfigDict "
                                 "(a config file's get_config() starts from configs.paper_config(...))")
    for section in ("model",) + (("data",) if known_datasets is not None or "training" in config else ()) + (
            ("optimizer",) if "training" in config else ()):
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

    _check_numbers(config, check)   # every number and switch: type and range
    m = config.model
    check(_is_integer(m.get("input_size")) and m.input_size >= 8 and m.input_size % 8 == 0, "model.input_size",
          m.get("input_size"), "must be a positive multiple of 8 (three stride-2 pools)")
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
        check(not every or (dataset.read is not None and "heldout" in dataset.splits), "data.heldout_every", every,
              f"dataset {d.dataset!r} has no held-out split to set aside (lspet has)")
        check(not every or d.get("source", "files") == "files", "data.heldout_every", every,
              "needs data.source='files' (a TFDS build holds the whole training split)")
        check(d.get("eval_split") != "heldout" or every or dataset.read is None, "data.eval_split", "heldout",
              "needs data.heldout_every >= 1 (which people to hold out)")
        if getattr(dataset, "files", None):
            registry.check_files(d, splits, dataset)
    if "training" in config:
        t = config.training
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
