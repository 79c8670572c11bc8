"""The paper recipes run as a user names them (`python -m cpm_jax.train --config
experiments/NAME.py --workdir DIR` plus data paths): each parses and validates, and a data path
not given or not found fails at once (before any JAX or TensorFlow work) naming its config key.
`model.dtype = "auto"` is bfloat16 on accelerators, float32 on a CPU."""
import subprocess
import sys
import time

import pytest

from cpm_jax import configs, errors
from data_pipelines import registry
from tests.conftest import ROOT, python_env
from tests.test_paper_defaults import experiment

# recipe -> the keys it needs, in the order they are checked
RECIPES = {
    "lsp_paper": ("paths.lspet", "paths.lsp"),
    "mpii_paper": ("paths.mpii", "mpii_validation_file"),
    "flic_paper": ("paths.flic",),
}


def set_key(config, key: str, value: str) -> None:
    if key.startswith("paths."):
        config.data.paths[key.split(".", 1)[1]] = value
    else:
        config.data[key] = value


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_names_each_missing_or_wrong_path(name, tmp_path):
    config = experiment(name)
    configs.validate(config)                                   # the model and training parts are fine
    for key in RECIPES[name]:
        with pytest.raises(errors.ConfigError, match=rf"^config\.data\.{key} is not set: .*; e\.g\. "
                                                     rf"--config\.data\.{key}="):
            configs.validate(config, registry.DATASETS)
        missing = str(tmp_path / "nowhere" / key)
        set_key(config, key, missing)
        problem = "no such file" if key.endswith("_file") else "no such directory"
        with pytest.raises(errors.ConfigError, match=rf"^config\.data\.{key} = '{missing}': {problem}"):
            configs.validate(config, registry.DATASETS)
        place = tmp_path / key
        if key.endswith("_file"):
            place.write_bytes(b"")
        else:
            place.mkdir()
        set_key(config, key, str(place))
    configs.validate(config, registry.DATASETS)                # every path there: nothing else is read


def test_a_file_given_for_a_folder_is_named(tmp_path):
    config = experiment("flic_paper")
    (tmp_path / "examples.mat").write_bytes(b"")
    config.data.paths.flic = str(tmp_path / "examples.mat")
    with pytest.raises(errors.ConfigError, match=r"config\.data\.paths\.flic = .*examples\.mat': a file, not a "
                                                 r"directory; expected the FLIC folder"):
        configs.validate(config, registry.DATASETS)


def test_only_the_splits_read_are_checked(tmp_path):
    config = experiment("lsp_paper")
    config.data.paths.lsp = str(tmp_path)
    configs.validate(config, registry.DATASETS, splits=("test",))          # LSP 1001-2000 only
    with pytest.raises(errors.ConfigError, match=r"config\.data\.paths\.lspet is not set"):
        configs.validate(config, registry.DATASETS, splits=("train",))
    config = experiment("mpii_paper")
    config.data.paths.mpii = str(tmp_path)
    configs.validate(config, registry.DATASETS, splits=("train",))
    (tmp_path / "detections.mat").write_bytes(b"")
    config.data.mpii_validation_file = "detections.mat"                    # a name under paths.mpii
    configs.validate(config, registry.DATASETS)


def test_tfds_source_needs_its_folder_not_the_raw_paths(tmp_path):
    config = experiment("lsp_paper")
    config.data.source = "tfds"
    with pytest.raises(errors.ConfigError, match=r"config\.data\.tfds_data_dir is not set"):
        configs.validate(config, registry.DATASETS)
    config.data.tfds_data_dir = str(tmp_path)
    configs.validate(config, registry.DATASETS)


def test_a_recipe_without_paths_fails_at_once_on_the_command_line(tmp_path):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cpm_jax.train", "--config", "experiments/lsp_paper.py",
                             "--workdir", str(tmp_path / "run"), "--config.data.paths.lsp=/x"],
                            capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=120)
    seconds = time.monotonic() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert lines[-1].startswith("cpm_jax.train: error: config.data.paths.lspet is not set: the LSP Extended "
                                "folder"), lines[-1]
    assert len(lines) <= 3 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()                     # nothing was started
    assert seconds < 20, seconds                               # ~4 s here: imports, no JAX or data work


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
    for backend, dtype in (("cpu", "float32"), ("gpu", "bfloat16"), ("cuda", "bfloat16"), ("tpu", "bfloat16")):
        config = experiment("lsp_paper")
        assert config.model.dtype == "auto"
        assert configs.resolve_dtype(config, backend) is config and config.model.dtype == dtype
    config = experiment("lsp_paper")
    config.model.dtype = "float32"                             # a choice is kept
    assert configs.resolve_dtype(config, "tpu").model.dtype == "float32"
    config.model.dtype = "fp8"
    with pytest.raises(errors.ConfigError, match=r"config\.model\.dtype = 'fp8': must be one of float32, "
                                                 r"bfloat16, float16, auto"):
        configs.validate(config)
