"""Every command users type keeps its name and answers `--help` with its own flags (a thin entry
module over the library: an import error or a flag defined twice shows here)."""
import subprocess
import sys
from concurrent import futures

from tests.conftest import ROOT, python_env

COMMANDS = {  # module -> flags its --help must list
    "cpm_jax.train": ("--config", "--workdir", "--coordinator_address"),
    "cpm_jax.predict": ("--pretrained", "--workdir", "--model", "--out", "--every", "--max_frames"),
    "cpm_jax.export": ("--pretrained", "--workdir", "--out", "--formats", "--overwrite"),
    "cpm_jax.sweep": ("--stages", "--schemes", "--collect"),
    "cpm_jax.bench": ("--config", "--compare", "--parts"),
    "cpm_jax.show_data": ("--config",),
    "cpm_jax.summary": ("--config",),
    "cpm_jax.pretrained": ("--name", "--workdir", "--dtype"),
    "data_pipelines.build_tfds": ("--dataset", "--manual_dir", "--data_dir"),
    "cpm_jax.evaluate": ("score", "run", "mean_pose"),
}


def help_text(module: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_every_command_answers_help_with_its_flags():
    with futures.ThreadPoolExecutor(2) as pool:
        answers = dict(zip(COMMANDS, pool.map(help_text, COMMANDS)))
    for module, (code, text) in answers.items():
        assert "Traceback" not in text, (module, text[-2000:])
        assert code in (0, 1), (module, code, text[-2000:])   # absl's --help exits 1 after printing
        missing = [flag for flag in COMMANDS[module] if flag not in text]
        assert not missing, (module, missing, text[-2000:])
