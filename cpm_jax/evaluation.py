"""Held-out evaluation during training: PCK per stage on canonical crops, and pictures of results."""
import json
import os

import flax
import jax
import ml_collections
import numpy as np
from absl import logging

from cpm_jax import inference, metrics, visualize
from data_pipelines import pipeline, registry


def make_predict_step(model):
    """pmapped: (replicated variables, device batch) -> every stage's joints in crop pixels
    (D, b, T, P, 2) and their peak beliefs (D, b, T, P)."""
    def predict(variables, batch):
        beliefs = model.apply(variables, batch["image"], batch["center_map"], train=False)
        return inference.stage_joints(beliefs)
    return jax.pmap(predict, axis_name="batch")


def predict_split(config: ml_collections.ConfigDict, model, replicated_variables, split: str,
                  count: int | None = None) -> dict:
    """Runs every stage on a split's canonical crops.

    Returns numpy arrays over the N real examples: `pred` (N, T, P, 2) and `gt` (N, P, 2) in
    original-image pixels, `peak` (N, T, P), `visibility` (N, P), `index` (N,)."""
    predict = make_predict_step(model)
    out = {"pred": [], "gt": [], "peak": [], "visibility": [], "index": []}
    for batch in pipeline.eval_batches(config, jax.local_device_count(), split, count):
        joints, peak = jax.device_get(predict(replicated_variables, batch))
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        valid = flat(batch["valid"])
        out["pred"].append(inference.crop_to_image(flat(joints), flat(batch["crop_to_image"]))[valid])
        out["gt"].append(flat(batch["image_joints"])[valid])
        out["peak"].append(flat(peak)[valid])
        out["visibility"].append(flat(batch["visibility"])[valid])
        out["index"].append(flat(batch["index"])[valid])
    return {k: np.concatenate(v) for k, v in out.items()}


def pck_per_stage(predictions: dict, order, threshold: float = 0.2) -> list[dict]:
    """LSP-style PCK@threshold (torso-normalised) of every stage, in stage order, over the
    labelled joints of examples whose torso joints are labelled (all joints of LSP's test set);
    `order` is the joints' Skeleton."""
    gt, labelled = predictions["gt"], predictions["visibility"] > 0
    a, b = order.torso_indices
    counted = labelled & (labelled[:, a] & labelled[:, b])[:, None]
    torso = metrics.torso_size(gt, order)
    return [metrics.pck(predictions["pred"][:, t], gt, torso, threshold, counted=counted, joints=order)
            for t in range(predictions["pred"].shape[1])]


def write_pictures(config, model, variables, workdir: str, num: int) -> list[str]:
    """skeletons.png: `num` held-out crops with final-stage skeletons (dotted: ground truth);
    beliefs_by_stage.png: the first crop's belief maps, stage by stage."""
    batch = next(pipeline.eval_batches(config, 1, count=num))
    order = registry.get(config.data.dataset).skeleton
    batch = jax.tree.map(lambda x: x[0, :num], batch)
    beliefs = np.asarray(model.apply(variables, batch["image"], batch["center_map"], train=False))
    joints, _ = jax.device_get(inference.stage_joints(beliefs))
    images = [visualize.to_uint8(im) for im in batch["image"]]
    paths = [os.path.join(workdir, "skeletons.png"), os.path.join(workdir, "beliefs_by_stage.png")]
    visualize.skeleton_grid(images, joints[:, -1], paths[0], ground_truth=batch["joints"], order=order)
    visualize.belief_strip(images[0], beliefs[0], paths[1], joints_per_stage=joints[0], order=order)
    return paths


def evaluate_and_report(config, model, params, workdir: str, step: int) -> dict:
    """PCK@0.2 of every stage on the evaluation split -> metrics.json and PNGs in `workdir`."""
    variables = {"params": params}
    split = pipeline.eval_split(config)
    predictions = predict_split(config, model, flax.jax_utils.replicate(variables), split)
    per_stage = pck_per_stage(predictions, registry.get(config.data.dataset).skeleton)
    result = {
        "step": step,
        "dataset": config.data.dataset,
        "split": split,
        "num_examples": int(len(predictions["index"])),
        "pck@0.2_per_stage": [s["total"] for s in per_stage],
        "final_stage": per_stage[-1],
    }
    for t, s in enumerate(per_stage, 1):
        logging.info("held-out PCK@0.2 stage %d: %.3f  (%s)", t, s["total"],
                     " ".join(f"{k} {v:.2f}" for k, v in s["parts"].items() if v is not None))
    result["pictures"] = write_pictures(config, model, variables, workdir, config.training.num_visualized)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
