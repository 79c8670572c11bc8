"""What a user sees after a mistake on the command line (cli.run): exit status 1 within seconds,
at most 3 lines on stderr naming the key or file; a traceback only with `-v 1`.

Run as a user runs the tools, in subprocesses; nothing is trained (show_data and summary fail
before reading data or building a model)."""
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, python_env

TINY = str(ROOT / "tests" / "tiny_experiment.py")


def run(module: str, *args: str, cwd=ROOT) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                            env=python_env(), cwd=cwd, timeout=120)
    return result, time.monotonic() - start


def check_short_error(result: subprocess.CompletedProcess, seconds: float, program: str, *names: str) -> str:
    """The error line (the last line of stderr), after checking the exit, the time and the length."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert seconds < 30, seconds
    assert 1 <= len(lines) <= 3, result.stderr
    assert "Traceback" not in result.stderr
    error = next(line for line in lines if line.startswith(f"{program}: error: "))
    for name in names:
        assert name in error, (name, result.stderr)
    return error


def test_unknown_config_key_names_it_and_the_closest_key(tmp_path):
    result, seconds = run("cpm_jax.show_data", "--config", TINY, "--out", str(tmp_path / "out"),
                          "--config.model.num_stagez=3")
    error = check_short_error(result, seconds, "cpm_jax.show_data", "config.model", "'num_stagez'")
    assert "did you mean 'num_stages'?" in error
    assert not (tmp_path / "out").exists()


def test_rejected_value_names_key_value_and_rule(tmp_path):
    result, seconds = run("cpm_jax.show_data", "--config", TINY, "--out", str(tmp_path / "out"),
                          "--config.model.input_size=30")
    check_short_error(result, seconds, "cpm_jax.show_data", "config.model.input_size = 30",
                      "multiple of 8")
    assert not (tmp_path / "out").exists()


def test_a_run_that_fails_before_its_pipeline_never_imports_tensorflow(tmp_path):
    """TensorFlow's import (3-12 s on 2 cores) waits for the first pipeline (runtime.import_tensorflow)."""
    script = ("import atexit, runpy, sys\n"
              "atexit.register(lambda: print('imported:', sorted(m for m in sys.modules if m.startswith(('tensorflow', 'cpm_jax')))))\n"
              "sys.argv = ['train'] + sys.argv[1:]\n"
              "runpy.run_module('cpm_jax.train', run_name='__main__', alter_sys=True)\n")
    result = subprocess.run([sys.executable, "-c", script, "--config", TINY, "--workdir", str(tmp_path / "w"),
                             "--config.model.num_stages=0"], capture_output=True, text=True, env=python_env(),
                            cwd=ROOT, timeout=120)
    assert result.returncode == 1 and "config.model.num_stages = 0" in result.stderr, result.stderr[-3000:]
    imported = result.stdout.split("imported:")[-1]
    assert "'cpm_jax.runtime'" in imported  # the check sees what the run imported
    assert "tensorflow" not in imported


def test_without_tensorflow_a_run_stops_at_once_saying_how_to_install_it(tmp_path):
    """As if TensorFlow were not installed (importlib cannot find it): the error comes from
    runtime.setup(), before the run writes anything into its workdir."""
    script = ("import importlib.util, runpy, sys\n"
              "find_spec = importlib.util.find_spec\n"
              "importlib.util.find_spec = lambda name, *a: None if name == 'tensorflow' else find_spec(name, *a)\n"
              "sys.argv = ['cpm_jax.train'] + sys.argv[1:]\n"
              "runpy.run_module('cpm_jax.train', run_name='__main__', alter_sys=True)\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script, "--config", TINY, "--workdir", str(tmp_path / "w")],
                            capture_output=True, text=True, env=python_env(), cwd=ROOT, timeout=120)
    check_short_error(result, time.monotonic() - start, "cpm_jax.train", "TensorFlow is not installed",
                      "pip install 'cpm_jax[tf]'")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name, text, names", [
    ("missing.py", None, ["missing.py", "no such file"]),
    ("broken.py", "def get_config(:\n    pass\n", ["broken.py:1", "syntax error"]),
    ("empty.py", "X = 1\n", ["empty.py", "get_config()"]),
])
def test_bad_config_file_names_the_file(tmp_path, name, text, names):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result, seconds = run("cpm_jax.summary", "--config", str(path))
    check_short_error(result, seconds, "cpm_jax.summary", *names)


@pytest.mark.parametrize("args", [
    ["-v", "1", "--config", "{tmp}/broken.py"],                      # fails while flags parse
    ["--config", TINY, "--config.model.input_size=30", "--verbosity=1"],  # fails in main
])
def test_verbosity_1_shows_the_traceback(tmp_path, args):
    (tmp_path / "broken.py").write_text("def get_config(:\n    pass\n")
    result, _ = run("cpm_jax.summary", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("cpm_jax.summary: error: ")


RAN = "(while running the config file of --config; -v 1 shows the traceback)"


@pytest.mark.parametrize("body, shown", [
    ('def get_config():\n    raise ValueError("boom")\n', "{path}:2: ValueError: boom " + RAN),
    ('def get_config():\n    raise KeyError("no \'lsp\' path: set it")\n',
     "{path}:2: KeyError: no 'lsp' path: set it " + RAN),
    ('def get_config():\n    raise RuntimeError("caf\\u00e9 \\"x\\"\\nsecond line")\n',
     '{path}:2: RuntimeError: café "x" ' + RAN),
    ("def get_config():\n    raise ValueError()\n", "{path}:2: ValueError " + RAN),
    ('import json\nX = json.load(open("{tmp}/absent.json"))\n',
     "{path}: FileNotFoundError: [Errno 2] No such file or directory: '{tmp}/absent.json' "
     "(while running the config file of --config: a file it reads is missing)"),
])
def test_an_exception_in_a_config_file_is_one_readable_line(tmp_path, body, shown):
    """The file, its line where known, the exception's type and message as written (not a repr
    with escapes), from train (and for the first case from evaluate run); nothing is created."""
    path = tmp_path / "mine.py"
    path.write_text(body.replace("{tmp}", str(tmp_path)))
    workdir = str(tmp_path / "w")
    tools = [("cpm_jax.train", ["--config", path, "--workdir", workdir]),
             ("cpm_jax.evaluate", ["run", "--config", path, "--workdir", workdir])]
    for module, args in tools[:2 if "boom" in body else 1]:
        result, seconds = run(module, *map(str, args))
        check_short_error(result, seconds, module)
        assert result.stderr.strip().splitlines() == [f"{module}: error: " + shown.format(path=path, tmp=tmp_path)]
    assert sorted(os.listdir(tmp_path)) == ["mine.py"]
