"""`python -m cpm_jax.benchmarks.accelerator`: the prepared GPU/TPU check, run whole on a CPU with the
tiny model (two dtypes, batch 2, a search up to batch 4, the pipeline on 1 and 2 cores, a 4-step
training run), so that it cannot rot between the runs on an accelerator. Only the JSON's
structure and the values' signs are checked, never speed; the search and the loss parsing are
checked on made-up inputs."""
import json
import subprocess
import sys

import pytest

from cpm_jax.benchmarks import accelerator, batch_search, pipeline_scaling, train_run
from tests.conftest import ROOT, python_env


def test_the_whole_check_runs_on_a_cpu_with_the_tiny_config(tmp_path):
    out_file = tmp_path / "check" / "accelerator.json"
    result = subprocess.run(
        [sys.executable, "-m", "cpm_jax.benchmarks.accelerator", "--out", str(out_file),
         "--config", "tests/tiny_experiment.py", "--pipeline_config", "tests/tiny_experiment.py",
         "--dtypes", "float32,bfloat16", "--batch", "2", "--max_batch", "4", "--steps", "1",
         "--pipeline_batches", "1", "--cores", "1,2,64", "--train_config", "tests/tiny_experiment.py",
         "--train_steps", "4", "--train_arg=--config.training.log_every=1",
         "--train_arg=--config.training.checkpoint_every=4", "--train_timeout_s", "240", "--time_limit_s", "300"],
        cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out_file}" in result.stdout
    out = json.loads(out_file.read_text())
    assert out["command"].startswith("python -m cpm_jax.benchmarks.accelerator --out")
    assert out["device"]["backend"] == "cpu" and out["device"]["devices"] >= 1 and out["device"]["cpu_cores"] >= 1
    assert out["model"]["input_size"] == 32 and out["model"]["params"] > 0 and out["model"]["train_tflops_per_image"] > 0
    assert out["model"]["train_dtype"] == "float32"  # "auto" on a CPU
    assert set(out["steps"]) == {"float32", "bfloat16"}
    for dtype, steps in out["steps"].items():
        at = steps["at_batch"]
        assert at["fits"] and at["batch"] == 2 and at["dtype"] == dtype
        assert at["images_per_s"] > 0 and at["tflops_per_s"] > 0 and at["compile_s"] >= 0
        assert at["bf16_peak_fraction"] is None or 0 < at["bf16_peak_fraction"]
        search = steps["largest_batch"]
        assert search["complete"] and search["largest"] == 4 and search["smallest_failed"] is None
        assert [t[0] for t in search["tried"]] == [2, 4]
        assert search["step"]["batch"] == 4 and search["step"]["images_per_s"] > 0
        assert search["step"]["memory"]["temp_gb"] > 0 and search["guess"] is None  # no memory limit on a CPU
    pipe = out["pipeline"]
    assert [row["cores"] for row in pipe["by_cores"]] == [c for c in (1, 2) if c <= pipe["cpu_cores"]]
    assert pipe["step_images_per_s"] == out["steps"]["float32"]["at_batch"]["images_per_s"]
    for row in pipe["by_cores"]:
        assert row["images_per_s"] > 0 and row["fraction_of_step"] > 0 and isinstance(row["keeps_up"], bool)
    run = out["train_run"]
    assert run["returncode"] == 0 and not run["timed_out"], run.get("log_tail")
    assert run["logged_losses"] == 4 and run["first_step"] == 1 and run["last_step"] == 4
    assert run["first_loss"] > 0 and run["last_loss"] > 0 and isinstance(run["loss_fell"], bool)
    assert run["heldout"] is not None
    assert out["elapsed_s"]["total"] > 0 and out["within_time_limit"]
    assert "accelerator check: " in result.stdout and "train run (4 steps): exit 0" in result.stdout


def test_the_search_doubles_then_bisects_and_keeps_to_the_limit_and_the_budget():
    def search(capacity, **kw):
        return batch_search.largest_batch(lambda b: b <= capacity, **kw)

    r = search(100, start=16, limit=1024)
    assert r["largest"] == 96 and r["smallest_failed"] == 112 and r["complete"]
    assert [b for b, _ in r["tried"]] == [16, 32, 64, 128, 96, 112]  # stops within 1/4 of 96
    r = search(220, start=16, limit=1024, guess=220)  # 32 and 64 are predicted to fit with room
    assert [b for b, _ in r["tried"]] == [16, 128, 256, 192, 224] and r["largest"] == 192
    r = search(100, start=16, limit=1024, resolution=0)
    assert r["largest"] == 100 and r["smallest_failed"] == 101
    assert search(10_000, start=16, limit=100)["largest"] == 100  # the limit itself is tried last
    r = search(9, start=16, limit=64, multiple=2, resolution=0)
    assert r["largest"] == 8 and r["smallest_failed"] == 10  # nothing at the start fits: bisect below it
    assert search(0, start=16, limit=64)["largest"] == 0
    r = search(1000, start=16, limit=1024, may_try=lambda b: b < 100)
    assert r["largest"] == 64 and not r["complete"]
    r = search(40, start=16, limit=1024, known={16: True})
    assert r["tried"][0] == [16, True] and r["largest"] == 40


def test_out_of_memory_errors_are_told_from_others():
    assert batch_search.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"))
    assert not batch_search.is_out_of_memory(ValueError("incompatible shapes"))


def test_losses_are_read_from_the_training_log():
    log = ("I0101 train.py] step 1/200  loss 12.500  [per stage 6.2 6.3]  3.1 images/s\n"
           "I0101 trainer.py] saving checkpoint\n"
           + "".join(f"I0101 trainer.py] step {k}/200  loss {12.5 - k / 20:.3f}  [per stage 1 1]\n" for k in range(2, 9)))
    losses = train_run.logged_losses(log)
    assert losses[0] == (1, 12.5) and len(losses) == 8
    summary = train_run.loss_summary(losses)
    assert summary["first_loss"] == 12.5 and summary["last_step"] == 8 and summary["loss_fell"] is True
    assert train_run.loss_summary([])["loss_fell"] is None
    assert train_run.loss_summary([(1, 3.0), (2, 4.0)])["loss_fell"] is False


def test_the_memory_plan_predicts_the_largest_batch():
    measured = {"batch": 16, "fits": True, "memory": {"temp_gb": 8.0, "total_gb": 9.0}}
    assert batch_search.predicted_largest(measured, available_gb=61.0) == 120  # (61 - 1) / 0.5
    assert batch_search.predicted_largest(measured, available_gb=None) is None  # a CPU
    assert batch_search.predicted_largest({"batch": 16, "fits": False}, available_gb=61.0) is None


def test_core_counts_and_the_time_estimate_of_a_try():
    assert pipeline_scaling.core_counts(["1", "2", "4", "8", "all"], 6) == [1, 2, 4, 6]
    assert pipeline_scaling.core_counts(["1", "all"], 1) == [1]
    last = {"batch": 16, "fits": True, "wall_s": 30.0, "median_s": 1.0}
    assert accelerator.search_estimate(last, 32, steps=9) == pytest.approx(1.25 * (20 + 20))


@pytest.mark.parametrize("flag, message", [("--parts=train_run,speed", "--parts: unknown speed; known: train_run"),
                                           ("--dtypes=fp16", "--dtypes: fp16; known: float32")])
def test_bad_flags_fail_before_anything_runs(tmp_path, flag, message):
    result = subprocess.run([sys.executable, "-m", "cpm_jax.benchmarks.accelerator", "--out", str(tmp_path / "a.json"),
                             "--config", "tests/tiny_experiment.py", flag],
                            cwd=ROOT, env=python_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and message in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "a.json").exists()
