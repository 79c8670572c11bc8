"""Trains a CPM: `python -m cpm_jax.train --config experiments/synthetic.py --workdir runs/demo [--config.x=y]`.

The job itself is `training.schemes.run` (the paper's training schemes) over
`training.trainer.train_and_evaluate`; this module is its command line: flags, process set-up,
joining a multi-host job, and the one-line report. A preempted run (SIGTERM) saves a checkpoint
and exits 0, an interrupted one (Ctrl-C) exits 130 (a second Ctrl-C: at once, without saving);
the same command continues it.
"""
import sys

import jax
from absl import flags
from ml_collections import config_flags

from cpm_jax import cli, configs, errors, outputs, runtime
from cpm_jax.training import distributed, schemes
from cpm_jax.training.preemption import Preempted
from data_pipelines import registry

FLAGS = flags.FLAGS


def main(argv) -> None:
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    # The user's mistakes first (pure Python, nothing set up yet): a bad value fails at once, alone.
    configs.validate(FLAGS.config, registry.DATASETS)
    outputs.check_directory(FLAGS.workdir, "--workdir")  # and a workdir that cannot be written
    runtime.setup()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)  # logs backend, devices
    try:
        result = schemes.run(FLAGS.config, FLAGS.workdir)
    except Preempted as stop:  # asked to stop, checkpoint saved: exit 0 (SIGTERM) or 130 (Ctrl-C)
        if jax.process_index() == 0:
            print(stop, flush=True)
        if stop.exit_status:
            sys.exit(stop.exit_status)
        return
    except KeyboardInterrupt:  # a second Ctrl-C (or one before training): stopped at once, the lock released
        print(f"interrupted (Ctrl-C): stopped at once, nothing more saved; the same command continues from the "
              f"newest checkpoint in {FLAGS.workdir}, if any", flush=True)
        sys.exit(130)
    if jax.process_index() != 0:    # one report per job
        return
    metric = result["metric"]
    stages = "  ".join(f"stage {i}: {v:.3f}" for i, v in enumerate(result[f"{metric.lower()}_per_stage"], 1))
    print(f"held-out {metric} per stage  {stages}")
    print(f"wrote {FLAGS.workdir}/metrics.json and {', '.join(result['pictures'])}")


if __name__ == "__main__":
    # Flags live here so that importing this module (tests, notebooks) defines none.
    config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.json and pictures.")
    flags.mark_flags_as_required(["config", "workdir"])
    # Multi-host: JAX auto-detects TPU pods, SLURM (srun) and Open MPI; these flags join a job by hand.
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, the same on every process.")
    flags.DEFINE_integer("num_processes", None, "Processes in the job (one per host, or per GPU).", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "This process's rank, 0 .. num_processes - 1.", lower_bound=0)
    cli.run(main)
