"""`python -m cpm_jax.export` (cpm_jax/serving): the tiny trained workdir exported once through the
CLI to all three formats; each file loaded back in its own runtime (`runtimes.load`) and compared
with JAX's beliefs at batch sizes 1 and 3; the model card's fields checked against the files, the
skeleton and the checkpoint; a modified, truncated or card-less export refused naming the file; the
CLI's refusals (an export already in --out, an unknown format, a workdir without a checkpoint)
and a file beyond the tolerance, with --out left as it was."""
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from cpm_jax import errors
from cpm_jax.model import architecture
from cpm_jax.serving import export, runtimes
from cpm_jax.training import checkpointing, state
from data_pipelines import registry
from tests.conftest import ROOT, python_env

PATHS = {"onnx": "model.onnx", "tflite": "model.tflite", "savedmodel": "saved_model"}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cpm_jax.export", *map(str, args)], capture_output=True, text=True,
                          env=python_env(), cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_workdir):
    """(export directory, the CLI's completed process) of the tiny workdir, all three formats."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    return out, cli("--workdir", tiny_workdir, "--out", out)


@pytest.fixture(scope="module")
def trained(tiny_workdir):
    """(config, variables, step) of the tiny workdir and its network jitted, as JAX runs it."""
    config, variables, step = state.restore_trained(str(tiny_workdir))
    return config, variables, step, jax.jit(export.network(config))


def sha256_of_tree(path: pathlib.Path) -> str:
    """The card's rule, written here again: a file's bytes; a directory's files, sorted."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(path.read_bytes())
        return digest.hexdigest()
    for file in sorted((f for f in path.rglob("*") if f.is_file()), key=lambda f: f.relative_to(path).as_posix()):
        data = file.read_bytes()
        digest.update(f"{file.relative_to(path).as_posix()}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def test_the_cli_writes_every_format_and_a_line_for_each(exported):
    out, run = exported
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, fmt in zip(lines, ("savedmodel", "tflite", "onnx")):
        match = re.fullmatch(rf"export: {fmt} -> {re.escape(str(out / PATHS[fmt]))} \([\d.]+ [kM]B, [\d.]+ s\); "
                             rf"(\w+) on 8 held-out crops: max \|beliefs - JAX\| ([\d.e+-]+)", line)
        assert match, line
        assert match.group(1) == runtimes.RUNTIMES[fmt] and float(match.group(2)) <= export.TOLERANCE
    for stage in ("loaded in", "held-out crops of synthetic 'heldout'", "savedmodel written in",
                  "onnx loaded back in onnxruntime", "checked and moved into"):
        assert stage in run.stderr
    assert sorted(os.listdir(out)) == ["model.onnx", "model.tflite", "model_card.json", "saved_model"]
    assert not [n for n in os.listdir(out.parent) if ".partial" in n]


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "savedmodel", "directory"])
def test_each_runtime_gives_jaxs_beliefs_at_any_batch(exported, trained, fmt):
    out, _ = exported
    config, variables, _, apply = trained
    model = runtimes.load(str(out if fmt == "directory" else out / PATHS[fmt]))
    assert model.runtime == runtimes.RUNTIMES["onnx" if fmt == "directory" else fmt]
    assert model.config.model.to_dict() == config.model.to_dict()
    m, rng = config.model, np.random.default_rng(0)
    for n in (1, 3):
        crops = rng.integers(0, 256, (n, m.input_size, m.input_size, 3), dtype=np.uint8)
        beliefs = model.beliefs(crops)
        assert beliefs.dtype == np.float32
        assert beliefs.shape == (n, m.num_stages, m.input_size // 8, m.input_size // 8, m.num_parts + 1)
        assert np.abs(beliefs - np.asarray(apply(variables, crops))).max() <= export.TOLERANCE


def test_the_files_have_the_documented_inputs_and_outputs(exported, trained):
    import onnx

    from cpm_jax import tf_loader
    out, _ = exported
    size = trained[0].model.input_size
    graph = onnx.load(str(out / "model.onnx")).graph
    (image,), (beliefs,) = graph.input, graph.output
    assert (image.name, beliefs.name) == ("image", "beliefs")
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert beliefs.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [size, size, 3]
    pools = sum(isinstance(layer, architecture.MaxPool) for layer in architecture.image_trunk(trained[0].model))
    assert [n.op_type for n in graph.node].count("MaxPool") == 2 * pools     # stage 1's and the shared trunk's
    interpreter = runtimes.tflite_interpreter(str(out / "model.tflite"))
    (spec,) = interpreter.get_input_details()
    assert list(spec["shape_signature"]) == [-1, size, size, 3] and spec["dtype"] == np.uint8
    tf = tf_loader.import_tensorflow()
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["image"]
    assert spec.shape.as_list() == [None, size, size, 3] and spec.dtype == tf.uint8
    assert list(serve.structured_outputs) == ["beliefs"]


def test_the_model_card_describes_the_files_and_their_source(exported, trained, tiny_workdir):
    from importlib import metadata
    out, _ = exported
    config, _, step, _ = trained
    card = json.loads((out / "model_card.json").read_text())
    for fmt, name in PATHS.items():
        entry = card["files"][fmt]
        assert entry["path"] == name and entry["sha256"] == sha256_of_tree(out / name)
        files = [out / name] if (out / name).is_file() else [f for f in (out / name).rglob("*") if f.is_file()]
        assert entry["bytes"] == sum(f.stat().st_size for f in files)
        check = card["checks"]["formats"][fmt]
        assert check["runtime"] == runtimes.RUNTIMES[fmt] and check["max_abs_difference"] <= export.TOLERANCE
    skeleton = registry.get(config.data.dataset).skeleton
    assert card["skeleton"]["joint_names"] == list(skeleton.joint_names)
    assert card["skeleton"]["flip_permutation"] == list(skeleton.flip_permutation)
    m = config.model
    assert card["input"]["shape"] == ["B", m.input_size, m.input_size, 3] and card["input"]["dtype"] == "uint8"
    assert card["output"]["shape"] == ["B", m.num_stages, m.input_size // 8, m.input_size // 8, m.num_parts + 1]
    assert (card["input_size"], card["num_stages"], card["num_parts"]) == (m.input_size, m.num_stages, m.num_parts)
    assert card["config"] == json.loads(checkpointing.read_config(str(tiny_workdir)).to_json_best_effort())
    assert card["heldout"] == json.loads((pathlib.Path(tiny_workdir) / "metrics.json").read_text())
    checkpoint = pathlib.Path(tiny_workdir).resolve() / "checkpoints" / str(step)
    assert card["source"] == {"workdir": str(pathlib.Path(tiny_workdir).resolve()), "step": step,
                              "sha256": sha256_of_tree(checkpoint)}
    assert card["checks"]["crops"] == {"source": "heldout", "dataset": "synthetic", "split": "heldout", "count": 8}
    assert card["converters"]["onnxruntime"] == metadata.version("onnxruntime")


def test_a_modified_truncated_or_unexplained_export_is_refused(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    onnx_file, tflite_file, card_file = copy / "model.onnx", copy / "model.tflite", copy / "model_card.json"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    corrupt = rf"^{re.escape(str(onnx_file))}: modified or corrupt: .*export it again"
    with pytest.raises(errors.CheckpointError, match=corrupt):
        runtimes.load(str(onnx_file))
    with pytest.raises(errors.CheckpointError, match=re.escape(str(onnx_file))):
        runtimes.load(str(copy))                      # the directory picks model.onnx first
    tflite_file.write_bytes(tflite_file.read_bytes()[:1000])
    with pytest.raises(errors.CheckpointError, match=rf"^{re.escape(str(tflite_file))}: modified or corrupt"):
        runtimes.load(str(tflite_file))
    card = json.loads(card_file.read_text())
    card["files"]["tflite"]["sha256"] = sha256_of_tree(tflite_file)    # a card that vouches for a broken file
    card_file.write_text(json.dumps(card))
    with pytest.raises(errors.CheckpointError, match=rf"^{re.escape(str(tflite_file))}: tflite cannot read it"):
        runtimes.load(str(tflite_file))
    card["input_size"] = 64
    card_file.write_text(json.dumps(card))
    wrong_size = r"saved_model: its input is \(B, 32, 32, 3\), but .* says \(B, 64, 64, 3\)"
    with pytest.raises(errors.CheckpointError, match=wrong_size):
        runtimes.load(str(copy / "saved_model"))
    card_file.unlink()
    with pytest.raises(errors.CheckpointError, match=rf"{re.escape(str(tflite_file))}: no model_card.json beside it"):
        runtimes.load(str(tflite_file))
    with pytest.raises(errors.NoCheckpointError, match=r"nothing.onnx: no such file"):
        runtimes.load(str(copy / "nothing.onnx"))


def test_the_cli_refuses_an_out_that_holds_an_export(exported):
    out, _ = exported
    card = (out / "model_card.json").read_bytes()
    run = cli("--workdir", "unused", "--out", out)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"cpm_jax.export: error: --out {out}: already holds an export (model_card.json, model.onnx, saved_model, "
        "model.tflite); pass --overwrite to replace it, or choose another --out")
    assert (out / "model_card.json").read_bytes() == card


WITHOUT_TF2ONNX = ("import runpy, sys; sys.modules['tf2onnx'] = None; sys.argv[0] = 'cpm_jax.export'; "
                   "runpy.run_module('cpm_jax.export', run_name='__main__', alter_sys=True)")


@pytest.mark.parametrize("case", ["no model", "both models", "bad format", "no converter", "out is a file",
                                  "no checkpoint"])
def test_the_cli_refuses_in_one_line_and_writes_nothing(case, tmp_path):
    empty, out, file = tmp_path / "empty", tmp_path / "out", tmp_path / "file"
    empty.mkdir()
    file.write_text("x")
    args = {"no model": ["--out", out],
            "both models": ["--pretrained", "lspet_cpu", "--workdir", empty, "--out", out],
            "bad format": ["--workdir", empty, "--out", out, "--formats", "onnx,pdf"],
            "no converter": ["--workdir", empty, "--out", out, "--formats", "tflite,onnx"],
            "out is a file": ["--workdir", empty, "--out", file],
            "no checkpoint": ["--workdir", empty, "--out", out, "--formats", "tflite"]}[case]
    expected = {"no model": "give the model with exactly one of --pretrained NAME and --workdir DIR",
                "both models": "give the model with exactly one of --pretrained NAME and --workdir DIR",
                "bad format": "--formats 'onnx,pdf': unknown 'pdf'; choose from savedmodel,tflite,onnx",
                "no converter": "--formats tflite,onnx needs tf2onnx, not installed: pip install 'cpm_jax[export]' "
                                "(and 'cpm_jax[cpu]' for TensorFlow)",
                "out is a file": f"--out {file}: is a file, not a directory",
                "no checkpoint": f"{empty}: no checkpoint"}[case]
    if case == "no converter":
        run = subprocess.run([sys.executable, "-c", WITHOUT_TF2ONNX, *map(str, args)], capture_output=True,
                             text=True, env=python_env(), cwd=ROOT, timeout=300)
    else:
        run = cli(*args)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith(f"cpm_jax.export: error: {expected}"), run.stderr
    assert not [line for line in lines[:-1] if "Traceback" in line or line.startswith("export:")]
    assert sorted(os.listdir(tmp_path)) == ["empty", "file"] and file.read_text() == "x"


def test_a_file_beyond_the_tolerance_is_refused_and_the_old_export_kept(exported, trained, tmp_path, monkeypatch):
    out, _ = exported
    config, variables, step, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {name: sha256_of_tree(copy / name) for name in os.listdir(copy)}
    honest = runtimes.Exported.beliefs

    def off_by_a_hundredth(self, crops):
        return honest(self, crops) + (0.01 if self.runtime == "tflite" else 0.0)

    monkeypatch.setattr(runtimes.Exported, "beliefs", off_by_a_hundredth)
    with pytest.raises(errors.CheckpointError) as refused:
        export.export(config, variables, {"step": step}, None, str(copy), ("tflite",), overwrite=True,
                      log=lambda _: None)
    assert str(refused.value) == (f"{copy / 'model.tflite'}: tflite's beliefs differ from JAX's by 0.01 (> 0.001) "
                                  f"on 8 held-out crops; nothing was written to {copy}")
    assert {name: sha256_of_tree(copy / name) for name in os.listdir(copy)} == before
    assert sorted(os.listdir(tmp_path)) == ["copy"]
    monkeypatch.undo()
    card, _ = export.export(config, variables, {"step": step}, None, str(copy), ("tflite",), overwrite=True,
                            log=lambda _: None)
    assert sorted(os.listdir(copy)) == ["model.tflite", "model_card.json"]       # the other formats went
    assert list(card["files"]) == ["tflite"] and runtimes.load(str(copy)).runtime == "tflite"
