"""The paper's training schemes (section 4.1 and figure 6b; docs/paper_notes.md section 2), chosen
by `config.training.scheme`; `SCHEMES` names the four ablations (i)-(iv) as config changes.

  "joint"                 (i) all stages trained together, every stage's loss (the default);
                          (iv) is the same with `loss.intermediate_supervision = False`.
  "stagewise"             (ii) stage 1 trained, frozen; stage 2 added and trained; ... stage T.
  "joint_from_stagewise"  (iii) (ii), then joint training of all stages initialised from it.

Every phase is one ordinary `train.train_and_evaluate` run in its own workdir, so each resumes
from its checkpoints; the final model is always in `<workdir>` (metrics.json, checkpoints), as
for any run, and the stage-wise phases are in `<workdir>/stagewise/stage<t>`.
"""
import json
import os

import jax
import ml_collections
from absl import logging

from cpm_jax import configs, errors
from cpm_jax.model import architecture
from cpm_jax.training import checkpointing, trainer

SCHEMES: dict[str, dict] = {
    "i": {"training.scheme": "joint"},
    "ii": {"training.scheme": "stagewise"},
    "iii": {"training.scheme": "joint_from_stagewise"},
    "iv": {"training.scheme": "joint", "loss.intermediate_supervision": False},
}


def apply(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """A copy of `config` with the changes of ablation `name` ("i" .. "iv") applied."""
    if name not in SCHEMES:
        raise errors.ConfigError(f"training scheme {name!r}: unknown; known: {', '.join(SCHEMES)}")
    config = config.copy_and_resolve_references()
    config.update_from_flattened_dict(SCHEMES[name])
    return config


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains as `config.training.scheme` says, resumably, and returns the final model's report
    (`train.train_and_evaluate`'s, also in `<workdir>/metrics.json`).

    "stagewise": phase t = 1..T (T = model.num_stages) trains a t-stage model for
    training.num_steps // T steps with the collections of stages 1..t-1 frozen and initialised
    from phase t-1, so the total number of updates equals joint training's. Phases 1..T-1 are in
    `<workdir>/stagewise/stage<t>`, phase T in `<workdir>`. "joint_from_stagewise": all T
    phases in `<workdir>/stagewise/stage<t>`, then training.num_steps of joint training in
    `<workdir>` initialised from stage T. A phase whose metrics.json is of its final step is
    skipped; an unfinished one resumes from its checkpoints."""
    configs.validate(config)
    scheme = config.training.get("scheme", "joint")
    if scheme == "joint":
        return trainer.train_and_evaluate(config, workdir)
    num_stages = config.model.num_stages
    groups = architecture.stage_parameter_groups(num_stages)
    stagewise_dir = os.path.join(workdir, "stagewise")
    num_phases = num_stages + (scheme == "joint_from_stagewise")
    report, previous = None, ""
    for t in range(1, num_stages + 1):
        last = scheme == "stagewise" and t == num_stages
        phase_dir = workdir if last else os.path.join(stagewise_dir, f"stage{t}")
        frozen = tuple(name for group in groups[:t - 1] for name in group)
        phase = _phase(config, num_stages=t, num_steps=config.training.num_steps // num_stages,
                       init_from=previous, frozen=frozen)
        what = f"training stage {t}" + (f" with {_stage_range(t - 1)} frozen" if t > 1 else "")
        report = _run_phase(phase, phase_dir, f"{scheme}: phase {t}/{num_phases}: {what}")
        previous = phase_dir
    if scheme == "joint_from_stagewise":
        phase = _phase(config, num_stages=num_stages, num_steps=config.training.num_steps,
                       init_from=previous, frozen=())
        report = _run_phase(phase, workdir, f"{scheme}: phase {num_phases}/{num_phases}: training all "
                                            f"{num_stages} stages jointly from {previous}")
    return report


def _phase(config: ml_collections.ConfigDict, **training) -> ml_collections.ConfigDict:
    """A joint-training config of one phase: `config` with model.num_stages and the training keys given."""
    phase = config.copy_and_resolve_references()
    phase.model.num_stages = training.pop("num_stages")
    phase.training.update(training, scheme="joint")
    return phase


def _stage_range(n: int) -> str:
    return "stage 1" if n == 1 else f"stages 1-{n}"


def _run_phase(phase: ml_collections.ConfigDict, phase_dir: str, what: str) -> dict:
    """Runs one phase, or returns its metrics.json if it already reached its final step (after
    checking that its config is the one it ran with)."""
    steps = phase.training.num_steps
    report = finished_report(phase_dir, steps)
    if report is not None:
        configs.resolve_dtype(phase, jax.default_backend())  # as train_and_evaluate records it
        checkpointing.check_same_run(phase_dir, phase)
        logging.info("%s: finished (%s), skipped", what, os.path.join(phase_dir, "metrics.json"))
        return report
    logging.info("%s, %d steps in %s", what, steps, phase_dir)
    return trainer.train_and_evaluate(phase, phase_dir)


def final_step(config: ml_collections.ConfigDict) -> int:
    """The step of the model `run` leaves in its workdir: "stagewise"'s last phase trains
    num_steps // num_stages steps, every other scheme num_steps."""
    t = config.training
    return t.num_steps // config.model.num_stages if t.get("scheme", "joint") == "stagewise" else t.num_steps


def finished_report(workdir: str, num_steps: int) -> dict | None:
    """`<workdir>/metrics.json` if it is the evaluation of step `num_steps`, else None."""
    try:
        with open(os.path.join(workdir, "metrics.json")) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("step") == num_steps else None
