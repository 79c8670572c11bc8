"""Joining a multi-process (multi-host) JAX job: `distributed.initialize(...)`, first thing in main.

    python -m cpm_jax.train ... --coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 0

Data parallelism across processes needs nothing else from the training step: `jax.pmap` over the
local devices of every process is ONE computation over all devices of the job, and its
`lax.pmean(grads, "batch")` averages over every device of every process. Each process feeds its
own disjoint shard of the global batch (`pipeline.train_batches(..., shard=(process_index(),
process_count()))`), so each step is one optimiser update on the global batch, identical on every
process.

A process joins explicitly (the CLI flags), automatically (a multi-process cluster environment
that JAX detects: Cloud TPU pod slices, SLURM tasks started with srun, Open MPI), or not at all,
and then a single-machine run is exactly what it was (`initialize` gives the rules). On CPU,
processes exchange gradients through gloo; on GPU/TPU through NCCL / the TPU interconnect.

In a multi-process job only process 0 writes what is written once (metrics.json, pictures,
summaries, config.json: `is_primary()`); every process still runs every pmapped computation
(training steps and the pmapped evaluator), since each is one job-wide computation. On processes
other than 0, `initialize` lowers absl's log level to WARNING, so that the log is read once.

Importing this module does nothing; `initialize` must run before JAX initialises its backends
(before the first `jax.devices()`, array or compilation) and after `runtime.setup()`.
"""
from __future__ import annotations

import dataclasses

from absl import logging

from cpm_jax import errors


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A cluster environment JAX's auto-detection recognises, and its process count."""
    name: str           # JAX's class name: SlurmCluster, GceTpuCluster, GkeTpuCluster, OmpiCluster, ...
    num_processes: int


def detect_cluster() -> Cluster | None:
    """The cluster environment `jax.distributed.initialize()` would use, with its process count,
    or None where there is none (or it cannot be queried: a warning says why).

    The same choice as JAX 0.10's `ClusterEnv.auto_detect_unset_distributed_params`: the first
    registered environment that is present, opt-in ones (mpi4py) excluded. On a Cloud TPU VM the
    count comes from the TPU metadata server."""
    try:
        from jax._src import clusters
        candidates = [env for env in clusters.ClusterEnv._cluster_types if not env.opt_in_only_method]
    except (ImportError, AttributeError) as error:  # another JAX: pass the flags explicitly there
        logging.warning("distributed: cannot inspect JAX's cluster detection (%s); pass "
                        "--coordinator_address, --num_processes and --process_id to run on several hosts", error)
        return None
    for env in candidates:
        try:
            if not env.is_env_present():
                continue
            return Cluster(env.__name__, int(env.get_process_count()))
        except Exception as error:  # noqa: BLE001  (metadata servers, kubernetes API, env parsing)
            logging.warning("distributed: %s looks present but cannot be queried (%s: %s); running as "
                            "a single process (pass --coordinator_address, --num_processes and "
                            "--process_id to join a job)", env.__name__, type(error).__name__, error)
            return None
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300) -> str:
    """Joins the multi-process job this process belongs to, if any; returns and logs a line with
    the backend and device counts (`describe()`). How a process joins:
      * explicit: any of coordinator_address / num_processes / process_id given (the CLI flags) ->
        `jax.distributed.initialize(those)`; a cluster environment JAX knows fills in the others.
      * automatic: none given, and a cluster environment that JAX 0.10 auto-detects
        (`jax._src.clusters`: Cloud TPU VMs of a pod slice on GCE or GKE, SLURM tasks started with
        srun, Open MPI's mpirun; Kubernetes with the `kubernetes` package) reports MORE than one
        process -> `jax.distributed.initialize()` with no arguments, as JAX's documentation says.
      * otherwise nothing: a single-machine run is exactly what it was. In particular a SLURM job
        of ONE task is left alone (JAX's SLURM detection would otherwise restrict the process to
        the GPU of its SLURM_LOCALID), and so is a notebook in a Kubernetes pod.
    On CPU the processes use gloo (`jax_cpu_collectives_implementation`, set explicitly where it
    is unset: the default of jaxlib 0.10, not of older versions or overridden settings).

    coordinator_address: "host:port" of process 0 (the same on every process); num_processes,
      process_id: the job's size and this process's rank 0..n-1. Any of them given -> explicit;
      none -> automatic where a multi-process cluster environment is detected, else nothing;
      num_processes=1 alone (or with process_id 0) -> a single process, nothing joined.
    timeout_s: how long to wait for every process to connect.

    Raises errors.InputError for flag values JAX rejects (e.g. a missing coordinator address
    outside a cluster, process_id >= num_processes) and when JAX has already started."""
    import jax

    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    how = None
    if jax.distributed.is_initialized():
        how = "already joined (jax.distributed.initialize was called before)"
    elif num_processes == 1 and coordinator_address is None and process_id in (None, 0):
        logging.info("distributed: --num_processes 1: running as a single process")  # even in a cluster
    elif explicit:
        how = "explicit flags"
    else:
        cluster = detect_cluster()
        if cluster is not None and cluster.num_processes > 1:
            how = f"detected {cluster.name} with {cluster.num_processes} processes"
        elif cluster is not None:
            logging.info("distributed: %s with 1 process: running as a single process", cluster.name)
    if how is not None and not jax.distributed.is_initialized():
        _join(jax, coordinator_address, num_processes, process_id, timeout_s, explicit)
    if jax.process_count() > 1 and not is_primary():
        _log_warnings_only()
    line = describe() + (f"; multi-process job: {how}" if how else "")
    logging.info("%s", line)
    return line


def _join(jax, coordinator_address, num_processes, process_id, timeout_s, explicit) -> None:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        raise errors.InputError("cannot join a multi-process JAX job: JAX has already started in this "
                                "process (distributed.initialize must come before the first jax.devices(), "
                                "array or compilation)")
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes: gloo over TCP
    where = (f"--coordinator_address {coordinator_address} --num_processes {num_processes} "
             f"--process_id {process_id}")
    logging.info("distributed: joining (%s), waiting up to %d s for every process",
                 where if explicit else "auto-detected", timeout_s)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_s)
    except (ValueError, TypeError) as error:
        raise errors.InputError(f"cannot join a multi-process job with {where}: {error} "
                                "(outside a cluster that JAX detects, give all three flags; "
                                "process_id is 0..num_processes-1)") from error


def _log_warnings_only() -> None:
    """absl INFO off on this (non-primary) process, unless the user asked for more (-v 1)."""
    if logging.get_verbosity() == logging.INFO:
        logging.set_verbosity(logging.WARNING)


def is_primary() -> bool:
    """Whether this process writes what a job writes once (metrics.json, pictures, summaries,
    config.json, log lines): process 0. True in a single-process run."""
    import jax
    return jax.process_index() == 0


def describe() -> str:
    """One line: backend, device kind, devices in the job and on this process, process rank."""
    import jax
    devices = jax.local_devices()
    kind = devices[0].device_kind if devices else "?"
    return (f"JAX backend {jax.default_backend()} ({kind}): {jax.device_count()} devices in all, "
            f"{jax.local_device_count()} on this process; process {jax.process_index()} of "
            f"{jax.process_count()}")
