"""Multi-process data parallelism on this machine: two processes of `python -m cpm_jax.train` on
localhost, one CPU device each, exchanging gradients through gloo (`cpm_jax.training.distributed`).

  * they train the tiny CPM to the same parameters as one process with two (simulated) devices
    and as one process with one device, on the same global batch (the single-process runs are
    the same `train.train_step`, pipeline and initial state, in a script);
  * the job reports once (log, result line, metrics.json) and Orbax's process 0 alone writes the
    checkpoint;
  * cluster auto-detection only joins a job of several processes; flag mistakes are user errors.

Every subprocess runs in its own process group under a deadline; on any failure or timeout the
groups are killed, so that a process waiting for its peer cannot outlive the test.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cpm_jax import errors
from cpm_jax.training import distributed, state
from tests.conftest import ROOT, python_env, tiny_config

TINY = str(ROOT / "tests" / "tiny_experiment.py")
DEADLINE_S = 300          # for the whole group; a healthy run takes about a minute on 2 busy cores
STEPS = 3

SINGLE_PROCESS = r"""
import functools, json, os, sys
sys.path.insert(0, sys.argv[1])
from cpm_jax import runtime
runtime.setup()
import flax, jax, numpy as np
from cpm_jax.training import step as step_lib
from cpm_jax.training import state as train_states
from data_pipelines import pipeline
from tests.conftest import tiny_config

out, steps = sys.argv[2], int(sys.argv[3])
assert jax.process_count() == 1 and jax.local_device_count() == 2, jax.devices()
config = tiny_config()                        # global batch 4, adam, no dropout: as tiny_experiment.py
init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))   # as train.py
initial = train_states.create(config, init_rng)
step = functools.partial(step_lib.train_step, intermediate_supervision=config.loss.intermediate_supervision)
report = {}
for n in (2, 1):
    devices = jax.local_devices()[:n]
    p_step = jax.pmap(step, axis_name="batch", devices=devices)
    p_state = flax.jax_utils.replicate(initial, devices)
    rng = flax.jax_utils.replicate(dropout_rng, devices)
    batches = pipeline.train_batches(config, n)
    try:
        losses = []
        for _ in range(steps):
            p_state, metrics = p_step(p_state, next(batches), rng)
            losses.append(float(metrics["loss"][0]))
    finally:
        batches.close()
    params = flax.jax_utils.unreplicate(p_state).params
    np.savez(f"{out}/devices_{n}.npz", *jax.tree.leaves(jax.device_get(params)))
    report[f"losses_{n}"] = losses
np.savez(f"{out}/initial.npz", *jax.tree.leaves(jax.device_get(initial.params)))
print("REPORT " + json.dumps(report), flush=True)
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_group(commands: list[list[str]], envs: list[dict], log_dir,
              deadline_s: float = DEADLINE_S) -> list[tuple[int, str, str]]:
    """Runs the commands at once (command i with environment envs[i]), each in its own process
    group; returns (exit status, stdout, stderr) of each. The first one to fail, or the deadline,
    kills every group still running."""
    procs, files = [], []
    try:
        for i, (command, env) in enumerate(zip(commands, envs, strict=True)):
            out, err = open(log_dir / f"{i}.out", "w+"), open(log_dir / f"{i}.err", "w+")
            files.append((out, err))
            procs.append(subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ROOT,
                                          start_new_session=True))
        end = time.monotonic() + deadline_s
        while any(p.poll() is None for p in procs):
            if time.monotonic() > end or any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
    results = []
    for (out, err), p in zip(files, procs):
        out.seek(0), err.seek(0)
        results.append((p.returncode, out.read(), err.read()))
        out.close(), err.close()
    return results


def logs(tmp_path, name: str):
    (tmp_path / name).mkdir()
    return tmp_path / name


def check_ok(results) -> None:
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, f"process {i} exited {rc} (killed: -9; every process is killed when one fails " \
                        f"or after {DEADLINE_S} s)\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-4000:]}"


def env_for(devices: int) -> dict:
    xla = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    return python_env(XLA_FLAGS=xla, JAX_PLATFORMS="cpu")


def report(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("REPORT "))[len("REPORT "):])


def leaves(path) -> list[np.ndarray]:
    """The arrays of an .npz written with np.savez(path, *leaves), in order."""
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def losses_logged(stderr: str) -> list[float]:
    return [float(line.split("  loss ")[1].split()[0]) for line in stderr.splitlines()
            if f"/{STEPS}  loss " in line]


def test_two_processes_train_as_one_process_with_two_devices_and_with_one(tmp_path):
    """Two processes of the train command, against one process with two devices and with one
    (run alongside): the same parameters after STEPS steps, reported once, checkpointed once."""
    address, workdir = f"localhost:{free_port()}", tmp_path / "run"
    train = [sys.executable, "-m", "cpm_jax.train", "--config", TINY, "--workdir", str(workdir),
             f"--config.training.num_steps={STEPS}", "--config.data.num_heldout=2",
             "--config.training.num_visualized=1", "--coordinator_address", address, "--num_processes", "2"]
    single = [sys.executable, "-c", SINGLE_PROCESS, str(ROOT), str(tmp_path), str(STEPS)]
    started = time.monotonic()
    results = run_group([train + ["--process_id", "0"], train + ["--process_id", "1"], single],
                        [env_for(1), env_for(1), env_for(2)], logs(tmp_path, "logs"))
    seconds = time.monotonic() - started
    check_ok(results)
    (_, out0, err0), (_, out1, err1), (_, out_single, _) = results

    variables, step = state.restore_params(str(workdir), tiny_config())   # written by the job
    assert step == STEPS
    processes = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(variables["params"]))]
    two, one, initial = (leaves(tmp_path / f"{name}.npz") for name in ("devices_2", "devices_1", "initial"))
    diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))
    diffs = {"2 processes vs 1 process x 2 devices": diff(processes, two),
             "2 processes vs 1 process x 1 device": diff(processes, one),
             "1 process: 2 devices vs 1 device": diff(two, one)}
    moved = diff(processes, initial)
    print(f"max |parameter difference| after {STEPS} steps: {diffs}; largest update {moved:.3g}; "
          f"{seconds:.0f} s for the three processes")
    assert moved > 1e-4                              # the steps really moved the parameters
    for what, value in diffs.items():
        assert value < 1e-5, (what, diffs)
    single_losses = report(out_single)
    np.testing.assert_allclose(losses_logged(err0), single_losses["losses_2"], atol=1e-3)  # logged: 3 decimals
    np.testing.assert_allclose(single_losses["losses_1"], single_losses["losses_2"], rtol=1e-5)

    # Once per job: the start line, the step log, the result, the files; the checkpoint by process 0.
    assert "2 devices in all, 1 on this process; process 0 of 2" in err0, err0[-3000:]
    assert f"step {STEPS}/{STEPS}" in err0 and f"step {STEPS}/{STEPS}" not in err1
    assert "held-out PCK" in out0 and "held-out" not in out1
    assert json.loads((workdir / "metrics.json").read_text())["step"] == STEPS
    assert [d for d in os.listdir(workdir / "checkpoints" / str(STEPS) / "default")
            if d.startswith("ocdbt.process_")] == ["ocdbt.process_0"]


# -- joining or not, without starting a job -------------------------------------------------------

CLUSTER_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                     "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST", "TPU_WORKER_HOSTNAMES",
                     "TPU_PROCESS_ADDRESSES")


@pytest.fixture
def no_cluster(monkeypatch):
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def slurm(monkeypatch, tasks: int) -> None:
    for name, value in (("SLURM_JOB_ID", "123"), ("SLURM_STEP_NODELIST", "node[1-2]"),
                        ("SLURM_NTASKS", str(tasks)), ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")):
        monkeypatch.setenv(name, value)


def test_a_plain_machine_is_no_cluster_and_a_single_process(no_cluster):
    assert distributed.detect_cluster() is None
    for line in (distributed.initialize(), distributed.initialize(num_processes=1)):
        assert "process 0 of 1" in line and "multi-process" not in line
    assert distributed.is_primary()


def test_slurm_is_detected_and_joined_only_with_several_tasks(no_cluster):
    slurm(no_cluster, 4)
    assert distributed.detect_cluster() == distributed.Cluster("SlurmCluster", 4)
    slurm(no_cluster, 1)
    assert distributed.detect_cluster() == distributed.Cluster("SlurmCluster", 1)
    line = distributed.initialize()          # one task: left alone (no coordinator, all devices)
    assert "process 0 of 1" in line and "multi-process" not in line
    slurm(no_cluster, 4)
    line = distributed.initialize(num_processes=1)   # asked for one process: no job joined
    assert "process 0 of 1" in line and "multi-process" not in line


def test_flag_mistakes_are_user_errors(no_cluster):
    from jax._src import xla_bridge
    jax.devices()
    with pytest.raises(errors.InputError, match="already started"):   # JAX runs in this process
        distributed.initialize("localhost:1", 2, 0)
    no_cluster.setattr(xla_bridge, "backends_are_initialized", lambda: False)  # as in a fresh process
    with pytest.raises(errors.InputError, match="process_id < num_processes"):
        distributed.initialize("localhost:1", 2, 5)
    with pytest.raises(errors.InputError, match="coordinator_address should be defined"):
        distributed.initialize(None, 2, 1)
