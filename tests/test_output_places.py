"""Results that cannot be written: a read-only directory, a file where a directory belongs, a full
disk. Each tool (train, sweep, predict, show_data, evaluate run) exits 1 with one line naming the
path and the reason: before any work when the place is wrong from the start (nothing computed,
nothing written; cpm_jax/outputs.py), naming the file when a write fails later (outputs.writing;
an OSError that names its file: cli.run).

Run as a user runs the tools, in subprocesses, side by side. A read-only directory for root, whom
permission bits do not stop: a read-only bind mount in the subprocess's own mount namespace
(`unshare --mount`); where that is not allowed, /sys (no file can be created there); for other
users, mode 0o555. A full disk: a symlink to /dev/full where the tool writes a file. The model, where
one is needed: the shipped pretrained/lspet_cpu on the synthetic figures."""
import concurrent.futures
import errno
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from cpm_jax.training import checkpointing
from tests.conftest import ROOT, python_env, tiny_config
from tests.test_evaluate_score import lsp_files

TINY = str(ROOT / "tests" / "tiny_experiment.py")
REFUSED = tuple(os.strerror(e) for e in (errno.EROFS, errno.EACCES, errno.EPERM))
# The shipped model on one synthetic figure, one scale: a model for evaluate run without training one.
SHIPPED = ["--pretrained", "lspet_cpu", "--config.data.dataset=synthetic", "--config.data.num_heldout=1",
           "--config.data.heldout_every=0", "--stages", "last", "--scales", "1", "--batch_size", "1"]
MOUNT_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def mounted_read_only(directory) -> list[str]:
    """The command prefix that runs a command with `directory` mounted read-only for it alone."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_READ_ONLY, str(directory)]


@pytest.fixture
def read_only(tmp_path):
    """(a directory in which no file can be created, the prefix that runs a command so)."""
    place = tmp_path / "read_only"
    place.mkdir()
    if os.geteuid() != 0:
        place.chmod(0o555)
        yield place, []
        place.chmod(0o755)
        return
    prefix = mounted_read_only(place) if shutil.which("unshare") else None
    if prefix and subprocess.run(prefix + ["sh", "-c", f"! touch {place}/probe 2>/dev/null"],
                                 capture_output=True).returncode == 0:
        yield place, prefix
        return
    try:                                 # no mount allowed here: sysfs refuses new files, even root's
        os.close(tempfile.mkstemp(dir="/sys")[0])
        pytest.skip("no read-only directory for root: unshare --mount refused and /sys writable")
    except OSError:
        yield pathlib.Path("/sys"), []


def run_all(cases: dict) -> dict:
    """{name: (CompletedProcess, seconds)} of {name: (prefix, module, args)}, run side by side."""
    def one(case):
        prefix, module, args = case
        start = time.monotonic()
        result = subprocess.run(prefix + [sys.executable, "-m", module, *map(str, args)], capture_output=True,
                                text=True, env=python_env(), cwd=ROOT, timeout=300)
        return result, time.monotonic() - start
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        return dict(zip(cases, pool.map(one, cases.values())))


def error_line(result: subprocess.CompletedProcess, program: str, *texts: str) -> str:
    """The one error line, stderr's last, after checking the exit status and that no traceback came."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    for text in texts:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def photo(path) -> pathlib.Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 40, 3), np.uint8)).save(path)
    return path


def test_a_place_that_cannot_be_written_stops_each_tool_before_its_work(read_only, tmp_path):
    ro, mount = read_only
    before = sorted(os.listdir(ro))
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    image = photo(tmp_path / "photo.png")
    workdir = tmp_path / "trained"                  # config.json, and a file where predictions/ goes
    checkpointing.write_config(str(workdir), tiny_config())
    (workdir / "predictions").write_text("kept")
    pictures = tmp_path / "pictures"
    cases = {
        "train read-only": (mount, "cpm_jax.train", ["--config", TINY, "--workdir", ro / "run"]),
        "train file": ([], "cpm_jax.train", ["--config", TINY, "--workdir", a_file]),
        "sweep read-only": (mount, "cpm_jax.sweep", ["--config", TINY, "--workdir", ro, "--stages", "1,2"]),
        "sweep file": ([], "cpm_jax.sweep", ["--config", TINY, "--workdir", a_file / "sweep", "--stages", "1,2"]),
        "predict read-only": (mount, "cpm_jax.predict", ["--pretrained", "lspet_cpu", "--out", ro / "out", image]),
        "predict file": ([], "cpm_jax.predict", ["--pretrained", "lspet_cpu", "--out", a_file, image]),
        "predict gallery": (mount, "cpm_jax.predict", ["--pretrained", "lspet_cpu", "--out", pictures,
                                                       "--gallery", ro / "all.png", image]),
        "predict gallery not png": ([], "cpm_jax.predict", ["--pretrained", "lspet_cpu", "--out", pictures,
                                                            "--gallery", tmp_path / "all", image]),
        # A million examples: minutes of drawing, had the check come after reading them.
        "show_data read-only": (mount, "cpm_jax.show_data", ["--config", TINY, "--out", ro / "out", "--num", 10**6]),
        "show_data file": ([], "cpm_jax.show_data", ["--config", TINY, "--out", a_file / "out", "--num", 10**6]),
        "evaluate read-only": (mount, "cpm_jax.evaluate", ["run", *SHIPPED, "--out", ro / "pred.npz"]),
        "evaluate file": ([], "cpm_jax.evaluate", ["run", "--workdir", workdir, "--count", 1]),
    }
    done = run_all(cases)
    expected = {
        "train read-only": ("cpm_jax.train", f"--workdir {ro}/run: cannot create files in {ro}: "),
        "train file": ("cpm_jax.train", f"--workdir {a_file}: is a file, not a directory"),
        "sweep read-only": ("cpm_jax.sweep", f"--workdir {ro}: cannot create files in it: "),
        "sweep file": ("cpm_jax.sweep", f"--workdir {a_file}/sweep: {a_file} is a file, not a directory"),
        "predict read-only": ("cpm_jax.predict", f"--out {ro}/out: cannot create files in {ro}: "),
        "predict file": ("cpm_jax.predict", f"--out {a_file}: is a file, not a directory"),
        "predict gallery": ("cpm_jax.predict", f"--gallery {ro}/all.png: cannot create files in {ro}: "),
        "predict gallery not png": ("cpm_jax.predict", f"--gallery {tmp_path}/all: the gallery is a PNG; "
                                                       "give a path ending in .png"),
        "show_data read-only": ("cpm_jax.show_data", f"--out {ro}/out: cannot create files in {ro}: "),
        "show_data file": ("cpm_jax.show_data", f"--out {a_file}/out: {a_file} is a file, not a directory"),
        "evaluate read-only": ("cpm_jax.evaluate", f"--out {ro}/pred.npz: cannot create files in {ro}: "),
        "evaluate file": ("cpm_jax.evaluate", f"the prediction files' directory {workdir}/predictions: is a "
                                              "file, not a directory; --out FILE writes them elsewhere"),
    }
    for name, (result, seconds) in done.items():
        program, text = expected[name]
        line = error_line(result, program, text)
        if "read-only" in name or name == "predict gallery":
            assert line.endswith(REFUSED), line                       # the OS's reason
        assert seconds < 60, (name, seconds)
        # Before the work: no device set up, no example read, no picture drawn, no table row.
        assert "distributed.py" not in result.stderr and "trainer.py" not in result.stderr, name
        assert "predict: [" not in result.stderr and "evaluate run:" not in result.stderr, name
        assert result.stdout == "", (name, result.stdout)
    assert sorted(os.listdir(ro)) == before                           # nothing written
    assert a_file.read_text() == "kept" and not pictures.exists()
    assert sorted(os.listdir(workdir)) == ["config.json", "predictions"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a disk that is always full)")
def test_a_write_that_fails_later_names_the_file(tmp_path):
    full = tmp_path / "full"                      # each tool's output file: a link to /dev/full
    full.mkdir()
    for name in ("photo_pose.png", "pred.npz", "overview.png"):
        (full / name).symlink_to("/dev/full")
    annotations, predictions = lsp_files(tmp_path)[:2]
    plot = tmp_path / "curve.png"                 # a directory where the plot goes
    plot.mkdir()
    image = photo(tmp_path / "photo.png")
    done = run_all({
        "predict": ([], "cpm_jax.predict", ["--pretrained", "lspet_cpu", "--scales", "1", "--out", full, image]),
        "evaluate": ([], "cpm_jax.evaluate", ["run", *SHIPPED, "--out", full / "pred.npz"]),
        "show_data": ([], "cpm_jax.show_data", ["--config", TINY, "--num", 1, "--out", full]),
        "score": ([], "cpm_jax.evaluate", ["score", "--dataset", "lsp", "--annotations", annotations,
                                           "--predictions", predictions, "--plot", plot]),
    })
    no_space = os.strerror(errno.ENOSPC)
    error_line(done["predict"][0], "cpm_jax.predict", f"cannot write {full}/photo_pose.png: {no_space}")
    assert "predict: [1/1]" in done["predict"][0].stderr      # it failed late, after the prediction
    error_line(done["evaluate"][0], "cpm_jax.evaluate", f"cannot write {full}/pred.npz: {no_space}")
    assert "evaluate run: 1/1 examples" in done["evaluate"][0].stderr
    error_line(done["show_data"][0], "cpm_jax.show_data", f"cannot write {full}/overview.png: {no_space}")
    # Not caught by a tool, an OSError naming its file is one line too (cli.run).
    error_line(done["score"][0], "cpm_jax.evaluate", f"{plot}: {os.strerror(errno.EISDIR)} (-v 1 shows the traceback)")
    assert os.listdir(plot) == []
    for name, (result, seconds) in done.items():
        assert seconds < 120, (name, seconds)
