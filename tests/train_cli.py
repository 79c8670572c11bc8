"""`python -m cpm_jax.train` run as a user runs it, for the tests of resuming, preemption,
divergence and workdir protection: start it, watch its log and its checkpoint directory, signal
it, and read what it left.

Every run of a test session shares one JAX compilation cache (`JAX_COMPILATION_CACHE_DIR`), so
that only the first run of a config compiles: a run costs its imports and a few steps. Every run
is started in its own session and killed at the end of its `with` block if still alive.
"""
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from cpm_jax.training import checkpointing
from cpm_jax.training import state as train_states
from tests.conftest import ROOT, python_env

TINY = str(ROOT / "tests" / "tiny_experiment.py")
TIMEOUT_S = 240      # for one run; a healthy one takes 10-30 s on 2 busy cores
# The tests' run: the tiny 2-stage CPM with dropout 0.5 and Adam, 24 steps, a checkpoint every 4
# (the newest 2 kept), held-out evaluation every 8 on 2 examples. Every test uses this model and
# optimiser, so that they share compiled programs through the cache.
STEPS = 24
RUN = {"training.num_steps": STEPS, "training.checkpoint_every": 4, "training.keep_checkpoints": 2,
       "training.eval_every": 8, "training.log_every": 1, "model.dropout_rate": 0.5,
       "data.num_heldout": 2, "training.num_visualized": 1}


def overrides(**changes) -> list[str]:
    """`--config.<key>=<value>` of RUN with `changes` (keys with "__" for ".": training__num_steps=5)."""
    return [f"--config.{k}={v}" for k, v in {**RUN, **{k.replace("__", "."): v for k, v in changes.items()}}.items()]


def last_logged_step(log: str) -> int:
    """The last step of a "step k/n  loss ..." line, 0 if none."""
    steps = [int(line.split("step ")[1].split("/")[0]) for line in log.splitlines() if "  loss " in line]
    return max(steps, default=0)


def cache_dir(tmp_path_factory) -> str:
    """The session's compilation cache (conftest.pytest_configure), shared by the xdist workers."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = tmp_path_factory.getbasetemp()
    return str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache")


def command(workdir, *overrides: str, module: str = "cpm_jax.train") -> list[str]:
    """The train command on the tiny experiment with `--config.x=y` overrides."""
    return [sys.executable, "-m", module, "--config", TINY, "--workdir", str(workdir), *overrides]


class Run:
    """One process of `args`; stdout and stderr go to files next to the workdir (`log` reads
    stderr so far)."""

    def __init__(self, args: list[str], cache: str, logs, name: str, **env):
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        self.started = time.monotonic()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(args, stdout=out, stderr=err, cwd=ROOT, start_new_session=True,
                                            env=python_env(JAX_COMPILATION_CACHE_DIR=cache, **env))

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.err.read_text()

    def stdout(self) -> str:
        return self.out.read_text()

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        """The exit status (-9: SIGKILL); seconds since the start in `self.seconds`."""
        rc = self.process.wait(timeout=timeout)
        self.seconds = time.monotonic() - self.started
        return rc

    def wait_until(self, condition, what: str, timeout: float = TIMEOUT_S, poll: float = 0.002) -> None:
        """Polls `condition()` until true; fails naming `what` if the process ends or time runs out."""
        end = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended (status {self.process.returncode}) before {what}\n"
                                     f"{self.log()[-3000:]}")
            if time.monotonic() > end:
                raise AssertionError(f"no {what} after {timeout} s\n{self.log()[-3000:]}")
            time.sleep(poll)

    def signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=60)


@contextlib.contextmanager
def running(args, cache, logs, name, **env):
    run = Run(args, cache, logs, name, **env)
    try:
        yield run
    finally:
        run.kill()


def train(workdir, *overrides, cache, logs, name, expect: int = 0) -> Run:
    """Runs the command to its end; asserts its exit status."""
    with running(command(workdir, *overrides), cache, logs, name) as run:
        rc = run.wait()
    assert rc == expect, f"{name}: exit status {rc}, expected {expect}\n{run.log()[-4000:]}"
    return run


def steps_on_disk(workdir, sub: str = "checkpoints") -> list[int]:
    """Completed step directories (Orbax renames a step's temporary directory when it is done)."""
    directory = os.path.join(workdir, sub)
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def temporary_dirs(workdir) -> list[str]:
    """Temporary step directories: a save in progress, or left by a killed one."""
    directory = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(directory) if "orbax-checkpoint-tmp" in n] if os.path.isdir(directory) else []


def restore(workdir, step: int | None = None, sub: str = "checkpoints"):
    """(state, step) of checkpoint `step` (default the newest) in `<workdir>/<sub>`, restored
    into `state.abstract` of the workdir's config.json."""
    import orbax.checkpoint as ocp
    config = checkpointing.read_config(str(workdir))
    mngr = checkpointing._manager(os.path.join(str(workdir), sub),
                                  ocp.CheckpointManagerOptions(read_only=True, create=False))
    step = mngr.latest_step() if step is None else step
    state = mngr.restore(step, args=ocp.args.StandardRestore(train_states.abstract(config)))
    return jax.device_get(state), step


def max_difference(a, b) -> float:
    """max |a - b| over every leaf of two states' params and opt_state (0.0: bit-identical
    where the leaves are also equal as arrays, checked by `assert_identical`)."""
    leaves = zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state)))
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in leaves)


def assert_identical(a, b) -> None:
    assert int(a.step) == int(b.step)
    jax.tree.map(np.testing.assert_array_equal, (a.params, a.opt_state), (b.params, b.opt_state))


def tree_digest(directory) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory` (and '' for every directory)."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), directory) + "/"] = ""
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def hooked_command(workdir, hook: str, *overrides: str) -> list[str]:
    """`command` in a process that first calls `tests.train_hooks.<hook>()` (an injected fault;
    its setting in the environment: CPM_TEST_HOOK_ARG), then runs cpm_jax.train as `python -m` does."""
    code = (f"import runpy; from tests import train_hooks; train_hooks.{hook}(); "
            "runpy.run_module('cpm_jax.train', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, "--config", TINY, "--workdir", str(workdir), *overrides]
