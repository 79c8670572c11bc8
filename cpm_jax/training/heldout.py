"""The run's held-out evaluation: every `training.eval_every` steps and at the end, the training
evaluator (`evaluators.CropEvaluator`) scores every stage on the evaluation split; `HeldOut` logs
the scores, writes them to TensorBoard, appends them to `<workdir>/heldout.jsonl`, redraws
`learning_curve.png` and keeps the best state; `make_report` is what `metrics.json` holds.
`check_heldout_examples` reads the held-out examples once before training, so that a bad file
fails the run at its start.
"""
import concurrent.futures
import contextlib
import json
import os
import time
import typing

import jax
import ml_collections
from absl import logging
from flax.training import train_state

from cpm_jax import visualize
from cpm_jax.errors import BadExampleError, DataError
from cpm_jax.training import checkpointing

if typing.TYPE_CHECKING:  # imported when the evaluation is made: it imports TensorFlow
    from cpm_jax.evaluation import evaluators


class HeldOut:
    """The run's held-out evaluation (evaluators.CropEvaluator): scores every stage, logs the
    scores, writes them to TensorBoard (`eval/<metric>/stage<t>`), appends them to
    `<workdir>/heldout.jsonl` and redraws `<workdir>/learning_curve.png` (process 0), and keeps
    the state with the best final-stage score in `<workdir>/best` (checkpointing.best_manager)."""

    def __init__(self, config: ml_collections.ConfigDict, best, writer, workdir: str):
        from cpm_jax.evaluation import evaluators
        self.evaluator = evaluators.CropEvaluator(config)
        self.best, self.writer = best, writer
        self.history_file = os.path.join(workdir, HISTORY)
        self.history = self.history_file if jax.process_index() == 0 else None

    def __call__(self, step: int, state: train_state.TrainState,
                 abandonable: typing.Callable = contextlib.nullcontext) -> "evaluators.Result":
        """Scores `state` at `step`; `abandonable()`: the context the evaluation itself runs in (a
        stop signal abandons it there: `Preemption.abandonable`), not the bookkeeping after it."""
        logging.info("step %d: held-out evaluation (%s split, %s)", step, self.evaluator.split,
                     f"{self.evaluator.count} examples" if self.evaluator.count else "every example")
        with abandonable():
            result = self.evaluator.run({"params": state.params})
        log_evaluation(step, result)
        self.writer.scalars(step, {f"eval/{result.label}/stage{t}": v
                                   for t, v in zip(result.stages, result.totals) if v is not None})
        if self.history:
            self._record(step, result)
        final = result.totals[-1]
        if final is not None and checkpointing.save_if_best(self.best, step, state, final):
            logging.info("step %d: best held-out %s of the final stage so far (%.3f): saved in %s/%d",
                         step, result.label, final, self.best.directory, step)
        return result

    def recorded(self, step: int) -> bool:
        """Whether `<workdir>/heldout.jsonl` has a row of `step` (read by every process)."""
        try:
            with open(self.history_file) as f:
                return any(json.loads(line).get("step") == step for line in f if line.strip())
        except (OSError, ValueError):
            return False

    def _record(self, step: int, result: "evaluators.Result") -> None:
        with open(self.history, "a") as f:
            f.write(json.dumps({"step": step, "metric": result.label, "per_stage": result.totals,
                                "parts_per_stage": [r["parts"] for r in result.per_stage]}) + "\n")
        with open(self.history) as f:
            rows = {row["step"]: row for row in map(json.loads, f)}   # a resumed run: the newest per step
        visualize.learning_curve([rows[k] for k in sorted(rows)],
                                 os.path.join(os.path.dirname(self.history), "learning_curve.png"))


HISTORY = "heldout.jsonl"      # one line per held-out evaluation: step, metric, per-stage scores


def log_evaluation(step: int, result: "evaluators.Result") -> None:
    for t, s in zip(result.stages, result.per_stage):
        parts = " ".join(f"{k} {v:.2f}" for k, v in s["parts"].items() if v is not None)
        logging.info("step %d: held-out %s stage %d: %.3f  (%s)", step, result.label, t, s["total"], parts)


def make_report(step: int, result: "evaluators.Result", pictures: list[str]) -> dict:
    """What `<workdir>/metrics.json` holds: the evaluator's result at `step` (fractions) and the pictures."""
    return {
        "step": step, "dataset": result.dataset, "split": result.split,
        "num_examples": len(result.predictions), "metric": result.label,
        f"{result.label.lower()}_per_stage": result.totals,
        "parts_per_stage": [r["parts"] for r in result.per_stage],
        "final_stage": result.per_stage[-1], "pictures": pictures,
    }


def check_heldout_examples(config: ml_collections.ConfigDict) -> None:
    """Reads every example the held-out evaluations score (the evaluation split's first
    `data.num_heldout`, else all of it) once, before training: a file that cannot be read or
    decoded fails the run now, naming file and index, not at an evaluation hours later. With
    `data.skip_bad_examples` bad ones are counted as an evaluation counts them: skipped and
    reported within `data.max_skipped_fraction`, a DataError past it. Synthetic data is not read."""
    from data_pipelines import pipeline, registry  # the pipeline imports TensorFlow: only when a run starts
    data = config.data
    if registry.get(data.dataset).read is None:
        return
    started, split = time.perf_counter(), registry.eval_split(data)
    source = registry.open_split(data, split)
    count = registry.example_count(source, data, int(data.get("num_heldout", 0)))
    pipeline.watch_skips(source, split, data, count)
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        try:
            for _ in pool.map(lambda i: source.load(i, i) is None, range(count)):
                pass
        except DataError as error:
            pool.shutdown(cancel_futures=True)
            fix = ("; fix or remove the file, or set config.data.skip_bad_examples = True to skip such examples"
                   if isinstance(error, BadExampleError) else "")
            raise type(error)(f"{error} (found reading the held-out examples before training{fix})") from None
    skipped = getattr(getattr(source, "bad_examples", None), "total_skipped", 0)
    logging.info("read the %d held-out examples (%s split) in %.1f s%s", count, split, time.perf_counter() - started,
                 f"; {skipped} skipped as bad" if skipped else "")
