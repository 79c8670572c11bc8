"""A short `python -m cpm_jax.train` run in a subprocess, and whether its loss fell.

The accelerator check's end-to-end part: the real command line (flags, set-up, pipeline,
checkpoints, held-out evaluation) on a fresh workdir, so that a host where the step runs fast but
training is broken (a device, a library, a pipeline that cannot start) shows it. The losses come
from the run's log lines ("step k/n  loss x  ..."; `training.log_every` sets how many), and the
loss counts as fallen when the mean of the last quarter of them is below the mean of the first
quarter (single steps are noisy). Times are seconds of wall clock; losses as the run logs them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

LOSS_LINE = re.compile(r"step (\d+)/(\d+)\s+loss\s+([-+0-9.eE]+|nan|inf)")


def logged_losses(log: str) -> list[tuple[int, float]]:
    """(step, loss) of every "step k/n  loss x" line of a training log, in order."""
    return [(int(m.group(1)), float(m.group(3))) for m in LOSS_LINE.finditer(log)]


def loss_summary(losses: list[tuple[int, float]]) -> dict:
    """first/last step and loss, the means of the first and last quarter of the logged losses,
    and whether the loss fell (None with fewer than two logged losses)."""
    if not losses:
        return {"logged_losses": 0, "first_loss": None, "last_loss": None, "loss_fell": None}
    quarter = max(1, len(losses) // 4)
    head = sum(v for _, v in losses[:quarter]) / quarter
    tail = sum(v for _, v in losses[-quarter:]) / quarter
    return {"logged_losses": len(losses), "first_step": losses[0][0], "first_loss": losses[0][1],
            "last_step": losses[-1][0], "last_loss": losses[-1][1],
            "first_quarter_mean_loss": head, "last_quarter_mean_loss": tail,
            "loss_fell": tail < head if len(losses) > 1 else None}


def run(config_file: str, steps: int, overrides: list[str], timeout_s: float, workdir: str = "") -> dict:
    """Runs `python -m cpm_jax.train --config config_file --workdir W --config.training.num_steps=steps
    *overrides` (W: a fresh temporary folder, removed afterwards, unless `workdir` is given) and
    returns its exit status, wall time, logged losses (`loss_summary`), the held-out result it
    wrote (metrics.json, without its picture list) and, when it failed, its log's tail."""
    made = not workdir
    workdir = workdir or tempfile.mkdtemp(prefix="cpm_jax_accelerator_train_")
    command = [sys.executable, "-m", "cpm_jax.train", "--config", config_file, "--workdir", workdir,
               f"--config.training.num_steps={steps}", *overrides]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        returncode, log = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = None
        log = "".join(part.decode(errors="replace") if isinstance(part, bytes) else (part or "")
                      for part in (expired.stdout, expired.stderr))
    out = {"command": " ".join(["python"] + command[1:]), "steps": steps,
           "returncode": returncode, "timed_out": returncode is None, "timeout_s": timeout_s,
           "wall_s": time.perf_counter() - start, **loss_summary(logged_losses(log))}
    try:
        with open(os.path.join(workdir, "metrics.json")) as f:
            out["heldout"] = {k: v for k, v in json.load(f).items() if k != "pictures"}
    except (OSError, ValueError):
        out["heldout"] = None
    if returncode != 0:
        out["log_tail"] = log[-3000:]
    if made:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        out["workdir"] = workdir
    return out
