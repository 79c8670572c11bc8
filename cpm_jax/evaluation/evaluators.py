"""Evaluators: small objects, built from a config, that run a model over a split and return named
metrics per stage (as big_vision's evaluators). Training, `evaluate run` and the sweep tool all
call them:

    evaluator = evaluators.get("crops")(config)          # or "multiscale"
    result = evaluator.run({"params": params})
    result.totals                                        # the metric of every evaluated stage

  crops       one canonical crop per example (canonical scale, no rotation, no flip), every
              stage, all local devices: the training evaluator (`training.eval_every` and the
              end of training).
  multiscale  the release's test procedure (multiscale.py, docs/paper_notes.md section 5): scales
              0.7..1.3 around the person placed by the dataset's rule, chosen stages, maps
              resampled to original pixels: `evaluate run`.
  mean_pose   no model: the training crops' mean pose placed in every canonical crop, the
              baseline a model must beat (`evaluate mean_pose`).

Both score predictions in ORIGINAL-image pixels against the records' own labels with the
dataset's metric (`registry.Dataset.metric`: the benchmark's PCK/PCKh, or LSP-style PCK over
labelled joints where there is no official benchmark), by one function, `score_stages`.
"""
import dataclasses
import time
from typing import Callable

import flax
import jax
import ml_collections
import numpy as np

from cpm_jax import errors, platform
from cpm_jax.evaluation import decoding, metrics, multiscale
from data_pipelines import registry


@dataclasses.dataclass(frozen=True)
class StagePredictions:
    """An evaluator's predictions for N examples, in original-image pixels, with the records'
    labels: pred (N, T', P, 2), peak (N, T', P) beliefs at the arg-max, gt (N, P, 2),
    visibility (N, P) (0: unlabelled), head_box (N, 4) x1 y1 x2 y2 (NaN where none), index (N,)
    each example's position in the split; `stages` the T' 1-based stage numbers."""
    stages: tuple[int, ...]
    pred: np.ndarray
    peak: np.ndarray
    gt: np.ndarray
    visibility: np.ndarray
    head_box: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclasses.dataclass(frozen=True)
class Result:
    """Metrics per evaluated stage (`per_stage`: metrics.score results, fractions), with what
    was evaluated and how long it took (seconds, compilation included)."""
    dataset: str
    split: str
    metric: str                       # a metrics.BENCHMARKS name
    threshold: float
    per_stage: list[dict]
    predictions: StagePredictions
    skipped: int = 0                  # bad examples skipped (data.skip_bad_examples)
    seconds: float = 0.0

    @property
    def benchmark(self) -> metrics.Benchmark:
        return metrics.BENCHMARKS[self.metric]

    @property
    def label(self) -> str:
        """e.g. "PCK@0.2", "PCKh@0.5"."""
        return f"{self.benchmark.metric}@{self.threshold:g}"

    @property
    def stages(self) -> tuple[int, ...]:
        return self.predictions.stages

    @property
    def totals(self) -> list[float | None]:
        return [s["total"] for s in self.per_stage]


def score_stages(dataset: registry.Dataset, predictions: StagePredictions,
                 threshold: float | None = None) -> list[dict]:
    """The dataset's metric (`dataset.metric`) of every evaluated stage, fractions."""
    p = predictions
    return [metrics.score(dataset.metric, p.pred[:, k], p.gt, threshold, p.visibility > 0, p.head_box)
            for k in range(len(p.stages))]


def _result(config, split, predictions: StagePredictions, skipped: int, started: float) -> Result:
    dataset = registry.get(config.data.dataset)
    if not len(predictions):
        raise errors.DataError(f"{dataset.name} {split}: every example was skipped as bad")
    threshold = metrics.BENCHMARKS[dataset.metric].default_threshold
    return Result(dataset.name, split, dataset.metric, threshold, score_stages(dataset, predictions),
                  predictions, skipped, time.perf_counter() - started)


def canonical_crops(config: ml_collections.ConfigDict, split: str, count: int):
    """The evaluation pipeline's batches of `split` on one device, without padding: dicts of
    (B, ...) arrays (images (B, H, W, 3), joints in crop pixels, crop_to_image affines, ...)."""
    from data_pipelines import pipeline
    batches = pipeline.eval_batches(config, 1, split, count)
    try:
        for batch in batches:
            valid = batch["valid"][0]
            yield jax.tree.map(lambda x: x[0][valid], batch)
    finally:
        batches.close()


class CropEvaluator:
    """Every stage on one canonical crop per example of `split` (default: the dataset's
    evaluation split), the first `count` examples (default: data.num_heldout, else the whole
    split; see registry.example_count), batches of training.eval_batch_size over all local
    devices."""

    def __init__(self, config: ml_collections.ConfigDict, split: str | None = None, count: int = 0):
        self.config = config
        self.split = split or registry.eval_split(config.data)
        self.count = count or int(config.data.get("num_heldout", 0))
        model = platform.make_model(config.model)

        def predict(variables, batch):
            beliefs = model.apply(variables, batch["image"], batch["center_map"], train=False)
            return decoding.stage_joints(beliefs)

        self._predict = jax.pmap(predict, axis_name="batch")

    def predict(self, variables) -> StagePredictions:
        """Every stage's joints in original-image pixels (crop pixels mapped back through each
        example's crop -> image affine)."""
        from data_pipelines import pipeline
        replicated = flax.jax_utils.replicate(variables)
        out = {k: [] for k in ("pred", "peak", "gt", "visibility", "head_box", "index")}
        batches = pipeline.eval_batches(self.config, jax.local_device_count(), self.split, self.count)
        try:
            for batch in batches:
                joints, peak = jax.device_get(self._predict(replicated, batch))
                flat = lambda x: x.reshape((-1,) + x.shape[2:])
                valid = flat(batch["valid"])
                out["pred"].append(decoding.crop_to_image(flat(joints), flat(batch["crop_to_image"]))[valid])
                out["peak"].append(flat(peak)[valid])
                for key, field in (("gt", "image_joints"), ("visibility", "visibility"),
                                   ("head_box", "head_box"), ("index", "index")):
                    out[key].append(flat(batch[field])[valid])
        finally:
            batches.close()
        arrays = {k: np.concatenate(v) for k, v in out.items()}
        stages = tuple(range(1, self.config.model.num_stages + 1))
        return StagePredictions(stages, **arrays)

    def run(self, variables) -> Result:
        started = time.perf_counter()
        return _result(self.config, self.split, self.predict(variables), 0, started)

    def beliefs(self, variables, num: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict]:
        """The first `num` crops of the split through the network: (crops, uint8 (H, W, 3) each;
        beliefs (num, T, H/8, W/8, P+1); joints (num, T, P, 2) per stage in crop pixels; the
        batch's other fields, e.g. "joints" and "visibility" of the ground truth)."""
        from cpm_jax import visualize
        parts = list(canonical_crops(self.config, self.split, num))
        batch = {k: np.concatenate([p[k] for p in parts])[:num] for k in parts[0]}
        model = platform.make_model(self.config.model)
        forward = jax.jit(lambda v, image, center: model.apply(v, image, center, train=False))  # not op by op
        beliefs = np.asarray(forward(variables, batch["image"], batch["center_map"]))
        joints, _ = jax.device_get(decoding.stage_joints(beliefs))
        return [visualize.to_uint8(im) for im in batch["image"]], beliefs, np.asarray(joints), batch

    def write_pictures(self, variables, out: str, num: int) -> list[str]:
        """skeletons.png: the first `num` crops with final-stage skeletons (dotted: ground truth,
        labelled joints only); beliefs_by_stage.png: the first crop's belief maps, stage by stage."""
        import os

        from cpm_jax import visualize
        images, beliefs, joints, batch = self.beliefs(variables, num)
        order = registry.get(self.config.data.dataset).skeleton
        truth = np.where(batch["visibility"][..., None] > 0, batch["joints"], np.nan)
        paths = [os.path.join(out, "skeletons.png"), os.path.join(out, "beliefs_by_stage.png")]
        visualize.skeleton_grid(images, joints[:, -1], paths[0], ground_truth=truth, order=order)
        visualize.belief_strip(images[0], beliefs[0], paths[1], joints_per_stage=joints[0], order=order)
        return paths


class MultiScaleEvaluator:
    """The release's test procedure over the first `count` examples of `split` (default: the
    dataset's evaluation split; count: registry.example_count's rule with `count`), for the
    stages in `options.stages` (None: the last). `person`: "image" or "annotated" (default: the
    dataset's `person_rule`). `on_progress(done, total)` is called after every batch."""

    def __init__(self, config: ml_collections.ConfigDict, split: str | None = None, count: int = 0,
                 options: multiscale.Options = multiscale.Options(), person: str | None = None,
                 workers: int = 4, on_progress: Callable[[int, int], None] | None = None):
        self.config, self.options, self.workers, self.on_progress = config, options, workers, on_progress
        self.dataset = registry.get(config.data.dataset)
        self.split = split or registry.eval_split(config.data)
        self.person = person or self.dataset.person_rule
        if self.person not in registry.PERSON_RULES:
            raise errors.InputError(f"person rule {self.person!r}; known: {', '.join(registry.PERSON_RULES)}")
        self.source = registry.open_split(config.data, self.split)
        self.count = registry.example_count(self.source, config.data, count)
        self.stages = options.stages or (config.model.num_stages,)
        self.skipped = 0

    def predict(self, variables) -> StagePredictions:
        data, size = self.config.data, self.config.model.input_size
        predictor = multiscale.MultiScalePredictor.for_model(self.config, variables, self.options)

        def loader(i):
            def load():
                record = self.source.load(i)
                if record is None:          # a bad example, skipped (data.skip_bad_examples)
                    return None
                where = multiscale.person_for_record(record, data, size, self.person)
                return record["image"], where, (i, record)
            return load

        on_batch = None if self.on_progress is None else (lambda done: self.on_progress(done, self.count))
        rows = list(predictor.run((loader(i) for i in range(self.count)), self.workers, on_batch))
        self.skipped = self.count - len(rows)
        if not rows:
            return StagePredictions(predictor.stages, *(np.zeros((0,)),) * 6)
        records = [r[0][1] for r in rows]
        return StagePredictions(
            predictor.stages,
            pred=np.stack([r[1] for r in rows]).astype(np.float64),
            peak=np.stack([r[2] for r in rows]),
            gt=np.stack([r["joints"] for r in records]).astype(np.float64),
            visibility=np.stack([r["visibility"] for r in records]),
            head_box=np.stack([r["head_box"] for r in records]).astype(np.float64),
            index=np.array([r[0][0] for r in rows], np.int64))

    def run(self, variables) -> Result:
        started = time.perf_counter()
        predictions = self.predict(variables)
        return _result(self.config, self.split, predictions, self.skipped, started)


class MeanPoseEvaluator:
    """The mean-pose baseline, scored as CropEvaluator scores a model: the mean of the labelled
    joints of `fit_split`'s canonical crops (crop pixels; default the training split) is the
    prediction for every crop of `split`, mapped back to its image. `run` ignores its argument
    (no model) and returns a one-"stage" Result (stage 0)."""

    def __init__(self, config: ml_collections.ConfigDict, split: str | None = None, count: int = 0,
                 fit_split: str = "train", fit_count: int = 0):
        self.config = config
        self.split = split or registry.eval_split(config.data)
        self.count = count or int(config.data.get("num_heldout", 0))
        self.fit_split, self.fit_count = fit_split, fit_count

    def mean_pose(self) -> np.ndarray:
        """(P, 2) crop pixels: each joint's mean over the crops where it is labelled."""
        total, labelled = 0.0, 0.0
        for batch in canonical_crops(self.config, self.fit_split, self.fit_count):
            mask = (batch["visibility"] > 0)[..., None]
            total = total + np.where(mask, batch["joints"], 0.0).sum(0)
            labelled = labelled + mask.sum(0)
        never = [name for name, n in zip(registry.get(self.config.data.dataset).skeleton.joint_names,
                                         labelled[:, 0]) if n == 0]
        if never:
            raise errors.DataError(f"{self.config.data.dataset} {self.fit_split}: no crop labels "
                                   f"{', '.join(never)}: the mean pose is undefined there")
        return total / labelled

    def predict(self, variables=None) -> StagePredictions:
        mean = self.mean_pose()
        out = {k: [] for k in ("pred", "gt", "visibility", "head_box", "index")}
        for batch in canonical_crops(self.config, self.split, self.count):
            crops = np.broadcast_to(mean, (len(batch["index"]), 1) + mean.shape)
            out["pred"].append(decoding.crop_to_image(crops, batch["crop_to_image"]))
            for key, field in (("gt", "image_joints"), ("visibility", "visibility"),
                               ("head_box", "head_box"), ("index", "index")):
                out[key].append(batch[field])
        arrays = {k: np.concatenate(v) for k, v in out.items()}
        return StagePredictions((0,), peak=np.ones(arrays["pred"].shape[:3], np.float32), **arrays)

    def run(self, variables=None) -> Result:
        started = time.perf_counter()
        return _result(self.config, self.split, self.predict(), 0, started)


EVALUATORS = {"crops": CropEvaluator, "multiscale": MultiScaleEvaluator, "mean_pose": MeanPoseEvaluator}


def get(name: str):
    if name not in EVALUATORS:
        raise errors.ConfigError(f"evaluator {name!r}: unknown; known: {', '.join(EVALUATORS)}")
    return EVALUATORS[name]
