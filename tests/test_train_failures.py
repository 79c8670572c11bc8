"""Failures end a run, they never hang it: a bad example without `data.skip_bad_examples` ends
`train` and `show_data` with status 1 within seconds, the message (file and index) last on
stderr; with skipping, a split with no usable example or too many bad ones stops with a
DataError naming the split and folder; skips are reported once per epoch.

The command-line tests run the tools as a user does, on LSPET copies (symlinks to the shared
images, one of them broken); the rest run the pipeline in-process on small written layouts."""
import pathlib
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from cpm_jax import configs, errors
from data_pipelines import pipeline, registry, sources
from tests import images
from tests.conftest import ROOT, python_env, require_shared, tiny_config

TINY = str(ROOT / "tests" / "tiny_experiment.py")
# After the error line, the process must be gone within this many seconds (cli.EXIT_GRACE_S is
# the bound when something still runs; a clean exit takes 1-4 s here).
AFTER_MESSAGE_S = 15


def run_tool(args, timeout: float = 150) -> tuple[int, list[str], float | None]:
    """(exit status, stderr lines, seconds from the first `error:` line to the exit) of a CLI."""
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=python_env(), cwd=ROOT)
    lines, seen = [], {}

    def read():
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if ": error: " in line and "error" not in seen:
                seen["error"] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{args[:2]} still ran after {timeout} s (a hang); stderr ends: {lines[-5:]}")
    ended = time.monotonic()
    reader.join(5)
    after = ended - seen["error"] if "error" in seen else None
    return status, [line for line in lines if line.strip()], after


def check_failure(status, lines, after, program: str, *names: str) -> str:
    assert status == 1, lines[-20:]
    assert lines and lines[-1].startswith(f"{program}: error: "), lines[-20:]
    assert after is not None and after < AFTER_MESSAGE_S, (after, lines[-5:])
    assert not any("Traceback" in line for line in lines), lines
    for name in names:
        assert name in lines[-1], (name, lines[-1])
    return lines[-1]


def first_index(size: int, seed: int = 0) -> int:
    """The example training reads first (stream position 0 of a one-process run)."""
    return int(pipeline._stream_indices(size, seed, (0, 1))(tf.constant(0, tf.int64))[0])


@pytest.fixture
def lspet_copy(tmp_path):
    require_shared(images.LSPET_ROOT / "joints.mat", "the LSPET dataset in ../shared")
    return images.lspet_subset(tmp_path / "lspet", 8)


def test_train_with_a_truncated_image_exits_at_once_naming_file_and_index(lspet_copy, tmp_path):
    index = first_index(8)
    name = lspet_copy / images.image_name("lspet", index)
    data = name.read_bytes()
    name.unlink()
    name.write_bytes(data[:len(data) // 2])                 # a truncated JPEG, as a broken copy
    status, lines, after = run_tool(["-m", "cpm_jax.train", "--config", TINY, "--workdir", str(tmp_path / "run"),
                                     "--config.data.dataset=lspet", f"--config.data.paths.lspet={lspet_copy}"])
    error = check_failure(status, lines, after, "cpm_jax.train", f"lspet example {index} ", str(name),
                          "image file is truncated")
    assert not any("op_kernel" in line or "PyFunc" in line for line in lines), lines   # no TensorFlow noise
    assert error.count("lspet example") == 1


def test_show_data_with_an_empty_images_folder_exits_at_once(lspet_copy, tmp_path):
    for path in (lspet_copy / "images").iterdir():
        path.unlink()
    status, lines, after = run_tool(["-m", "cpm_jax.show_data", "--config", TINY, "--out", str(tmp_path / "out"),
                                     "--num", "4", "--config.data.dataset=lspet",
                                     f"--config.data.paths.lspet={lspet_copy}"])
    check_failure(status, lines, after, "cpm_jax.show_data", f"lspet example {first_index(8)} ",
                  str(lspet_copy / "images"), "No such file or directory")
    assert not (tmp_path / "out").exists()


LEAKY_TOOL = """
import sys, time
from cpm_jax import cli, errors, runtime

def main(argv):
    runtime.setup()
    import tensorflow as tf
    def slow(x):
        time.sleep(0.02)
        return x
    ds = tf.data.Dataset.range(10 ** 9).map(lambda x: tf.numpy_function(slow, [x], tf.int64),
                                            num_parallel_calls=4).prefetch(8)
    global leaked
    leaked = ds.as_numpy_iterator()      # a tf.data iterator calling Python that nobody closes
    next(leaked)
    raise errors.DataError("lspet example 4 (/data/im00005.jpg): broken")

cli.EXIT_GRACE_S = 2.0
cli.run(main, argv=sys.argv[:1], program="leaky")
"""


def test_a_failed_run_ends_even_when_a_pipeline_is_left_running():
    # A live tf.data iterator that calls Python hangs the interpreter's exit forever (its
    # destructor waits for loader threads that cannot run Python any more); cli.run bounds it.
    status, lines, after = run_tool(["-c", LEAKY_TOOL], timeout=90)
    check_failure(status, lines, after, "leaky", "lspet example 4 (/data/im00005.jpg): broken")
    assert after < 2.0 + 8, after


# ---------------------------------------------------------------------------------------------
# skip_bad_examples: stop when nothing (or too little) is usable; report once per epoch.

W, H = 32, 24


def lspet_layout(root, n: int, broken=()) -> pathlib.Path:
    """An LSPET folder of n small JPEGs with people inside; `broken` image files hold garbage,
    and "all" removes every image."""
    rng = np.random.default_rng(0)
    joints = rng.uniform([5, 5], [W - 5, H - 5], (n, 14, 2)) + 1.0          # 1-based
    root = images.write_layout(root, joints, np.ones((n, 14)), "lspet", np.tile([W, H], (n, 1)))
    for i in broken:
        (root / images.image_name("lspet", i)).write_bytes(b"not an image")
    return root


def skipping_config(root, **data) -> ml_collections.ConfigDict:
    config = tiny_config()
    config.data.dataset, config.data.paths.lspet = "lspet", str(root)
    config.data.skip_bad_examples = True
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.mark.parametrize("bound", [0.1, 1.0])
def test_no_usable_example_stops_training_naming_split_and_folder(tmp_path, bound):
    root = lspet_layout(tmp_path / "lspet", 12)
    for path in (root / "images").iterdir():       # an empty images/ folder
        path.unlink()
    config = skipping_config(root, max_skipped_fraction=bound)
    start = time.monotonic()
    with pytest.raises(errors.DataError) as error, pipeline.train_batches(config, 1) as batches:
        next(batches)
    message = str(error.value)
    assert message.startswith(f"train split of lspet (images in {root / 'images'}): no usable examples"), message
    assert "No such file or directory" in message and "lspet example" in message
    if bound == 1.0:     # only the whole epoch can tell
        assert "all 12 examples of an epoch are bad" in message
    assert time.monotonic() - start < 30


def test_more_bad_examples_than_the_bound_stop_the_run(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(sources.logging, "warning", lambda message, *args: warnings.append(message % args))
    root = lspet_layout(tmp_path / "lspet", 10, broken=(2, 7))               # 20% of every epoch
    with pytest.raises(errors.DataError) as error, \
            pipeline.train_batches(skipping_config(root, max_skipped_fraction=0.1), 1) as batches:
        for _ in range(10):
            next(batches)
    message = str(error.value)
    assert message.startswith(f"train split of lspet (images in {root / 'images'}): 2 of the "), message
    assert "more than config.data.max_skipped_fraction = 0.1 of an epoch of 10" in message
    assert "im00003.jpg" in message and "im00008.jpg" in message
    assert not warnings                    # the error says it all, no report before it
    # Within the bound, training goes on and each epoch's skips are reported once.
    with pipeline.train_batches(skipping_config(root, max_skipped_fraction=0.25), 1) as batches:
        got = [next(batches) for _ in range(6)]                               # 24 of 3 epochs' 24 good
    assert all(b["image"].shape == (1, 4, 32, 32, 3) for b in got)
    assert 2 <= len(warnings) <= 4 and all("skipped 2 bad examples in the last epoch of 10" in w for w in warnings)


def test_skips_are_reported_once_per_epoch_whatever_the_loader_threads(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(sources.logging, "warning", lambda message, *args: warnings.append(message % args))
    root = lspet_layout(tmp_path / "lspet", 20, broken=(3, 11, 12))
    config = skipping_config(root, max_skipped_fraction=0.2)
    source = registry.open_split(config.data, "train")
    stream = pipeline.train_records(source, seed=0, count=5 * 20, data=config.data)   # 5 epochs
    options = tf.data.Options()
    options.threading.private_threadpool_size = 8
    records = list(pipeline.numpy_iterator(stream.prefetch(30).with_options(options)))
    assert len(records) == 5 * 17
    assert source.bad_examples.total_skipped == 5 * 3
    assert len(warnings) == 5, warnings
    for report in warnings:
        assert report.startswith(f"train split of lspet (images in {root / 'images'}): skipped 3 bad examples "
                                 "in the last epoch of 20"), report
    # Resumed mid-epoch (position 27): the rest of that epoch (13 positions) counts as one.
    warnings.clear()
    to_index = pipeline._stream_indices(20, 0, (0, 1))
    partial = sum(int(to_index(tf.constant(n, tf.int64))[0]) in (3, 11, 12) for n in range(27, 40))
    stream = pipeline.train_records(registry.open_split(config.data, "train"), seed=0, start=27, count=13 + 20,
                                    data=config.data)
    list(pipeline.numpy_iterator(stream.prefetch(30)))
    expected = ([f"skipped {partial} bad examples in the last epoch of 13"] if partial else []) + [
        "skipped 3 bad examples in the last epoch of 20"]
    assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings)), warnings


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_max_skipped_fraction_is_validated(value):
    config = tiny_config()
    config.data.max_skipped_fraction = value
    with pytest.raises(errors.ConfigError, match=r"config.data.max_skipped_fraction = .*: must be a fraction in \[0, 1\]"):
        configs.validate(config, registry.DATASETS)


def test_paper_data_bounds_skips():
    assert configs.paper_data("lsp").max_skipped_fraction == 0.1
    assert configs.paper_data("lsp").skip_bad_examples is False
