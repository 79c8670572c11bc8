"""Shipped models (cpm_jax/pretrained.py): export a tiny trained workdir, load it back exactly,
use it through `predict --pretrained` and `evaluate run --pretrained`, and refuse a missing,
corrupt or mismatched file with a message naming it. The model shipped in pretrained/ must
reproduce the joints recorded beside it."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from cpm_jax import errors
from cpm_jax.model import pretrained
from cpm_jax.training import checkpointing, release, state
from tests import images
from tests.conftest import ROOT, python_env, require_shared


def cli(module: str, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, tiny_workdir):
    """(directory, name, workdir) of a tiny model exported from a 2-step workdir."""
    workdir = tiny_workdir
    directory = tmp_path_factory.mktemp("shipped")
    release.export(str(workdir), "tiny", str(directory), note="2 steps of the tests' tiny CPM")
    return str(directory), "tiny", str(workdir)


def copy_model(directory: str, to) -> None:
    for suffix in (".npz", ".json"):
        shutil.copy(os.path.join(directory, f"tiny{suffix}"), to / f"tiny{suffix}")


def test_export_then_load_gives_the_checkpoint_rounded_to_float16(shipped):
    directory, name, workdir = shipped
    config, variables, info = pretrained.load(name, directory)
    _, trained, step = state.restore_trained(workdir)
    assert info["source"]["step"] == step == 2 and info["dtype"] == "float16"
    assert config.model.to_dict() == checkpointing.read_config(workdir).model.to_dict()
    flat_loaded = traverse_util.flatten_dict(variables)
    flat_trained = traverse_util.flatten_dict(trained)
    assert flat_loaded.keys() == flat_trained.keys()
    for key, value in flat_trained.items():
        assert flat_loaded[key].dtype == np.float32
        np.testing.assert_array_equal(flat_loaded[key], np.asarray(value).astype(np.float16).astype(np.float32))
    assert info["sha256"] == pretrained.sha256(os.path.join(directory, "tiny.npz"))
    with open(os.path.join(directory, "tiny.json")) as f:       # how to reproduce it, not where it was
        assert str(workdir) not in f.read()


def test_the_record_keeps_dataset_paths_relative_to_the_checkout_not_the_machine(tmp_path, monkeypatch):
    import ml_collections
    monkeypatch.chdir(tmp_path / "..")
    config = ml_collections.ConfigDict({"data": {"paths": {"lspet": str(tmp_path / "lspet"), "lsp": "",
                                                           "mpii": "data/mpii"}}, "model": {"num_stages": 2}})
    recorded = release.recorded_config(config)
    assert recorded["data"]["paths"] == {"lspet": os.path.join(tmp_path.name, "lspet"), "lsp": "", "mpii": "data/mpii"}
    assert recorded["model"] == {"num_stages": 2}


def test_loading_reproduces_the_recorded_joints_exactly(shipped):
    directory, name, _ = shipped
    same, recomputed, recorded = release.check(name, directory)
    assert same and recomputed.shape == (pretrained.CHECK_EXAMPLES, 2, 14, 2)
    assert np.isfinite(recorded).all()


def test_a_missing_or_corrupt_file_is_named(shipped, tmp_path):
    directory, name, _ = shipped
    with pytest.raises(errors.NoCheckpointError, match=r"nothing\.json does not exist; shipped: tiny"):
        pretrained.load("nothing", directory)
    broken = tmp_path / "broken"
    broken.mkdir()
    copy_model(directory, broken)
    data = bytearray((broken / "tiny.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "tiny.npz").write_bytes(bytes(data))
    with pytest.raises(errors.CheckpointError, match=rf"{broken / 'tiny.npz'} is corrupt or not the shipped file"):
        pretrained.load("tiny", str(broken))
    os.remove(broken / "tiny.npz")
    with pytest.raises(errors.NoCheckpointError, match=rf"{broken / 'tiny.npz'} does not exist"):
        pretrained.load("tiny", str(broken))
    (broken / "tiny.json").write_text(json.dumps({"sha256": "0" * 64, "config": {}}))
    with pytest.raises(errors.CheckpointError, match=rf"{broken / 'tiny.json'} lacks source, check"):
        pretrained.load("tiny", str(broken))


def test_predict_and_evaluate_with_pretrained_through_the_cli(shipped, tmp_path):
    directory, name, _ = shipped
    npz = os.path.join(directory, "tiny.npz")
    photo = images.write_jpeg(tmp_path / "me.jpg", images.gradient(90, 140))
    gallery = tmp_path / "gallery.png"
    result = cli("cpm_jax.predict", "--pretrained", npz, "--out", tmp_path / "out", "--scales", "1",
                 "--gallery", gallery, photo, photo)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["pretrained"] == npz and report["workdir"] is None and report["checkpoint_step"] == 2
    with Image.open(gallery) as sheet, Image.open(report["images"][0]["picture"]) as one:
        assert sheet.width == 1400 and sheet.height == 2 * round(one.height * 1400 / one.width)
    xy = np.array([[j["x"], j["y"]] for j in report["images"][0]["joints"]])
    assert xy.shape == (14, 2) and (xy >= 0).all() and (xy[:, 0] <= 139).all() and (xy[:, 1] <= 89).all()

    result = cli("cpm_jax.evaluate", "run", "--pretrained", npz, "--count", "2", "--scales", "1",
                 "--out", tmp_path / "pred.npz", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["workdir"] == f"pretrained model {npz}" and run["num_examples"] == 2
    assert [s["stage"] for s in run["per_stage"]] == [1, 2]

    # A corrupt file, a missing model: one line naming the file, exit status 1.
    bad = tmp_path / "bad"
    bad.mkdir()
    copy_model(directory, bad)
    (bad / "tiny.npz").write_bytes(b"not a zip file")
    result = cli("cpm_jax.predict", "--pretrained", bad / "tiny.npz", photo)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{bad / 'tiny.npz'} is corrupt or not the shipped file" in result.stderr, result.stderr[-2000:]
    result = cli("cpm_jax.evaluate", "run", "--pretrained", "no_such_model", "--count", "1")
    assert result.returncode == 1 and "no_such_model.json does not exist" in result.stderr, result.stderr[-2000:]


def test_the_lsp_commands_run_on_a_stand_in_from_lspet_photos(shipped, tmp_path):
    """RESULTS.md's commands that score a model the paper's way on the LSP test set (multi-scale
    test of LSP 1001-2000, then `evaluate score` against joints.mat), run on LSPET photos laid
    out as LSP; a few examples of the test split (--count, --allow_subset) keep it short."""
    require_shared([images.LSPET_ROOT / "joints.mat"], "the LSP Extended copy (shared/datasets/lspet)")
    directory, _, _ = shipped
    lsp_root = images.lsp_standin(tmp_path / "lsp_dataset")
    npz, predictions = os.path.join(directory, "tiny.npz"), tmp_path / "lsp_test.npz"
    result = cli("cpm_jax.evaluate", "run", "--pretrained", npz, "--config.data.dataset=lsp",
                 f"--config.data.paths.lsp={lsp_root}", "--stages", "last", "--count", "3",
                 "--scales", "0.8,1.0", "--out", predictions, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["dataset"] == "lsp" and run["split"] == "test" and run["num_examples"] == 3
    assert run["procedure"]["person"] == "image"                  # the release's LSP rule
    result = cli("cpm_jax.evaluate", "score", "--dataset", "lsp", "--annotations", lsp_root / "joints.mat",
                 "--predictions", predictions, "--allow_subset", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    score = json.loads(result.stdout.strip().splitlines()[-1])
    assert score["total"] == pytest.approx(run["per_stage"][-1]["total"])


# ---------------------------------------------------------------------------------------------
# The model shipped in pretrained/ (experiments/lspet_cpu.py, trained on LSPET).

SHIPPED = "lspet_cpu"


def test_the_shipped_model_reproduces_its_recorded_heldout_joints():
    require_shared([images.LSPET_ROOT / "joints.mat"], "the LSP Extended copy (shared/datasets/lspet)")
    config, variables, info = pretrained.load(SHIPPED)      # the checksum is checked here
    assert info["bytes"] <= 8e6 and info["dtype"] == "float16"
    assert info["config"]["data"]["heldout_every"] == 10 and info["check"]["split"] == "heldout"
    config.data.paths.lspet = str(images.LSPET_ROOT)       # wherever this checkout's data is
    recomputed = release.heldout_joints(config, variables, info["check"]["count"])
    recorded = np.asarray(info["check"]["joints"], np.float32)
    np.testing.assert_array_equal(recomputed.astype(np.float32), recorded)


@pytest.mark.parametrize("name", [SHIPPED, "synthetic"])
def test_a_shipped_record_names_no_path_of_the_machine_that_made_it(name):
    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []
    info = pretrained.read_info(name)
    assert [s for s in strings(info) if os.path.isabs(s)] == []
    assert info["source"] == {"step": info["heldout"]["step"]} and "python -m cpm_jax.train" in info["note"]


def test_predict_with_the_shipped_model_on_a_real_photo_gives_joints_inside_it(tmp_path):
    photo = images.LSPET_ROOT / "images" / "im00011.jpg"             # a held-out person
    require_shared([photo], "a real LSPET photo (shared/datasets/lspet/images)")
    result = cli("cpm_jax.predict", "--pretrained", SHIPPED, "--out", tmp_path, photo)
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads(result.stdout)["images"][0]
    xy = np.array([[j["x"], j["y"]] for j in entry["joints"]])
    assert xy.shape == (14, 2) and (xy >= 0).all()
    assert (xy[:, 0] <= entry["width"] - 1).all() and (xy[:, 1] <= entry["height"] - 1).all()


def test_a_failed_export_leaves_the_shipped_pair_as_it_was(shipped, monkeypatch):
    directory, name, workdir = shipped
    before = {s: open(os.path.join(directory, f"tiny{s}"), "rb").read() for s in (".npz", ".json")}

    def broken(*args, **kwargs):
        raise errors.DataError("the held-out split cannot be read")

    monkeypatch.setattr(release, "heldout_joints", broken)
    with pytest.raises(errors.DataError, match="held-out split"):
        release.export(str(workdir), name, directory, dtype="float32")
    assert {s: open(os.path.join(directory, f"tiny{s}"), "rb").read() for s in (".npz", ".json")} == before
    assert not [f for f in os.listdir(directory) if "partial" in f]      # nothing left aside
    monkeypatch.undo()
    assert release.check(name, directory)[0]


def test_training_can_start_from_a_shipped_model(shipped, tmp_path):
    from cpm_jax.training import state
    directory, name, workdir = shipped
    config = checkpointing.read_config(workdir)
    npz = os.path.join(directory, "tiny.npz")
    shared = state.shared_params(config, npz)
    _, variables, _ = pretrained.load(npz)
    assert shared.keys() == variables["params"].keys()
    for key, value in traverse_util.flatten_dict(variables["params"]).items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(shared)[key], value)
    missing = str(tmp_path / "gone.npz")
    with pytest.raises(errors.CheckpointError, match=rf"init_from = '{missing}': .*gone\.json does not exist"):
        state.shared_params(config, missing)
    with pytest.raises(errors.CheckpointError, match=r"init_from = 'pretrained:nothing': .*nothing\.json does not exist"):
        state.shared_params(config, "pretrained:nothing")


def test_train_from_a_shipped_model_of_other_shapes_exits_naming_it(tmp_path):
    result = cli("cpm_jax.train", "--config", "experiments/synthetic.py", "--workdir", tmp_path / "run",
                 "--config.training.init_from=pretrained:lspet_cpu")
    assert result.returncode == 1
    assert ("config.training.init_from = 'pretrained:lspet_cpu': its parameter collection 'stage1' has other "
            "shapes") in result.stderr
