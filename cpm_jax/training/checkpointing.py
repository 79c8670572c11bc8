"""A training workdir: Orbax checkpoints in `<workdir>/checkpoints`, the best one by held-out
metric in `<workdir>/best`, the run's `config.json`, and the lock that keeps a second run out.

    <workdir>/checkpoints/<step>/      the newest training.keep_checkpoints states (resume)
    <workdir>/best/<step>/             the state with the best final-stage held-out metric
    <workdir>/config.json              the config of the run that owns the workdir
    <workdir>/.lock                    held (flock) by the running `train`; host and pid inside
    <workdir>/unreadable_checkpoints/  step directories that could not be read, set aside

Orbax writes each step to `<step>.orbax-checkpoint-tmp` and renames it to `<step>` when complete
(on a local or NFS disk a rename is atomic), so a run killed at any moment, SIGKILL during a save
included, never leaves a step directory that a restart would pick up; the temporary directories
such a run leaves behind are removed when the next run opens the manager. A complete step that
cannot be read later (a file truncated or deleted, a tree of another model) is skipped by
`restore_newest_readable`, which names it and falls back to the one before (`set_aside` then
moves it out of the way). A save that fails (a full disk) or is not kept ends the run with one
line naming the step and the intact checkpoint before it (`save`, `wait`: save_failures.py).
"""
import contextlib
import datetime
import fcntl
import json
import logging as std_logging
import os
import shutil
import socket
import sys
import weakref

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from cpm_jax import errors
from cpm_jax.errors import NoCheckpointError
from cpm_jax.training import save_failures

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
UNREADABLE_DIR = "unreadable_checkpoints"
BEST_METRIC = "final_stage"       # the metrics a best checkpoint is saved with: {BEST_METRIC: value}


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """The workdir's checkpoints (the newest `keep`); removes temporary directories left by a
    killed save."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
    return _manager(os.path.join(os.path.abspath(workdir), "checkpoints"), options)


def best_manager(workdir: str) -> ocp.CheckpointManager:
    """`<workdir>/best`: one checkpoint, the one saved with the highest metrics[BEST_METRIC]."""
    options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m[BEST_METRIC], best_mode="max",
                                           create=True, cleanup_tmp_directories=True)
    return _manager(os.path.join(os.path.abspath(workdir), "best"), options)


def _manager(directory: str, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    """A manager of one unnamed item (a TrainState), fixed from the start: without `item_handlers`
    Orbax decides single- or multi-item from the first step directory it restores, and a damaged
    one (its `default/` gone) would lock the manager into the wrong mode for every other step."""
    return ocp.CheckpointManager(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(mngr: ocp.CheckpointManager, step: int, state, metrics: dict | None = None) -> bool:
    """Starts writing `state` as step `step` (asynchronously: `wait(mngr)`); returns whether the
    manager started the save (only those may be logged as saves). The previous save of `mngr` is
    waited for first, so that its failure is reported as its own (`wait`).

    What is written is a host (numpy) copy: in a multi-process job each process holds the
    replicated state on its own devices, arrays Orbax cannot save as they are ("Cannot serialize
    host local jax.Array"); every process calls `save` with its copy and Orbax's process 0 writes."""
    wait(mngr)
    host = jax.device_get(state)
    size = sum(int(getattr(leaf, "nbytes", 8)) for leaf in jax.tree.leaves(host))
    save_failures.quiet_orbax_echoes()
    try:
        saved = bool(mngr.save(step, args=ocp.args.StandardSave(host), metrics=metrics, force=True))
    except Exception as error:  # Orbax and TensorStore raise many types; name the step whatever they are.
        raise save_failures.failed(mngr, step, size, error, _reason(error)) from error
    if saved:
        _in_flight[mngr] = (step, size)
    return saved


def wait(mngr: ocp.CheckpointManager) -> None:
    """Waits for the save of `mngr` in flight. CheckpointError in one line if it failed (the step,
    the reason, the newest intact checkpoint; for a full disk, the space it needs) or if its step
    is not on disk after it (a manager that keeps none)."""
    step, size = _in_flight.pop(mngr, (None, 0))
    try:
        mngr.wait_until_finished()
    except Exception as error:
        if step is None:
            raise
        raise save_failures.failed(mngr, step, size, error, _reason(error)) from error
    if step is not None and step not in mngr.all_steps():
        raise save_failures.removed(mngr, step)


def ensure_saved(mngr: ocp.CheckpointManager, step: int) -> None:
    """Waits for the save in flight (`wait`); CheckpointError unless checkpoint `step` is on disk."""
    wait(mngr)
    if step not in mngr.all_steps():
        raise save_failures.not_saved(mngr, step)


def full_disk(mngr: ocp.CheckpointManager, error: BaseException) -> errors.CheckpointError:
    """The error a run ends with when a write found the disk full (`save_failures.no_space`):
    the failure of the save in flight, if any (it names the step), else `error`'s, in one line
    with the newest intact checkpoint."""
    try:
        wait(mngr)
    except errors.CheckpointError as failed:
        return failed
    return save_failures.disk_full(mngr, _reason(error))


@contextlib.contextmanager
def closing(mngr: ocp.CheckpointManager):
    """`mngr` for the block, closed after it once its save in flight has ended (`wait`). A block
    that fails or is interrupted keeps its own exception; a failed save is then logged."""
    try:
        yield mngr
    except BaseException:
        try:
            wait(mngr)
        except Exception as error:  # noqa: BLE001  (the block's exception is the one to report)
            logging.warning("%s", error)
        mngr.close()
        raise
    try:
        wait(mngr)
    finally:
        mngr.close()


# The save each manager has in flight: (step, bytes of the state), for `wait`'s messages.
_in_flight: "weakref.WeakKeyDictionary[ocp.CheckpointManager, tuple[int, int]]" = weakref.WeakKeyDictionary()


def save_if_best(mngr: ocp.CheckpointManager, step: int, state, value: float) -> bool:
    """Saves `state` into a `best_manager` if `value` beats the checkpoint there; returns whether
    it did. A step already there (a resumed run evaluating it again) is left as it is."""
    wait(mngr)                            # Orbax reads a step's metrics from disk
    best = mngr.best_step()
    if best == step:
        return False
    if best is not None and value <= (mngr.metrics(best) or {}).get(BEST_METRIC, -float("inf")):
        return False
    return save(mngr, step, state, {BEST_METRIC: float(value)})


def restore_latest(mngr: ocp.CheckpointManager, state):
    """(state, step) from the newest checkpoint that can be read, or (state, 0) unchanged if
    there is none. Newer ones that cannot be read are skipped with a warning naming their
    directories; if none can be read, CheckpointError names each (see `restore_newest_readable`)."""
    restored, step, _ = restore_newest_readable(mngr, state)
    return restored, step


def restore_newest_readable(mngr: ocp.CheckpointManager, state) -> tuple[object, int, list[int]]:
    """(state, step, unreadable newer steps): the newest checkpoint of `mngr` that restores into
    `state`'s structure, shapes and dtypes (`state` may be abstract: `state.abstract(config)`).

    A checkpoint that fails (a truncated or missing file, another tree) is logged with its
    directory and the reason, and the one before is tried. With no checkpoint at all: (state, 0,
    []). With checkpoints of which none can be read: CheckpointError naming each, so that a
    damaged workdir never silently starts over."""
    _quiet_orbax_read_failures()
    failures = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = mngr.restore(step, args=ocp.args.StandardRestore(state))
        except Exception as error:  # Orbax raises many types; name the directory whatever they are.
            failures.append((step, _reason(error)))
            logging.warning("checkpoint %s cannot be read (%s); trying the one before",
                            _step_dir(mngr, step), failures[-1][1])
            continue
        if failures:
            logging.warning("restored checkpoint %d of %s: the newer %s could not be read", step, mngr.directory,
                            ", ".join(str(s) for s, _ in failures))
        return restored, step, [s for s, _ in failures]
    if failures:
        raise errors.CheckpointError(
            f"no checkpoint of {mngr.directory} can be read, and none was changed (tree structures that do not "
            "match: they hold another model or optimiser than config.model / config.optimizer): " + "; ".join(
                f"cannot restore checkpoint {_step_dir(mngr, s)}: {reason}" for s, reason in failures))
    return state, 0, []


def set_aside(mngr: ocp.CheckpointManager, workdir: str, steps: list[int]) -> None:
    """Moves the step directories `steps` (unreadable, newer than the one restored) to
    `<workdir>/unreadable_checkpoints/<step>[.n]`, out of the manager's way (the resumed run
    saves those steps again), keeping them for inspection. Process 0 moves; every process waits."""
    if not steps:
        return
    if jax.process_index() == 0:
        aside = os.path.join(os.path.abspath(workdir), UNREADABLE_DIR)
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target, n = os.path.join(aside, str(step)), 1
            while os.path.exists(target):
                target, n = os.path.join(aside, f"{step}.{n}"), n + 1
            shutil.move(_step_dir(mngr, step), target)
            logging.warning("moved unreadable checkpoint %s to %s", _step_dir(mngr, step), target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("cpm_jax.training.checkpointing.set_aside")
    mngr.reload()


class _OrbaxReadFailureFilter(std_logging.Filter):
    """Drops asyncio's "Task/Future exception was never retrieved" for Orbax's reads."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        text = record.getMessage().lower()
        orbax = any(word in text for word in ("orbax", "tensorstore", "ocdbt"))
        return not (orbax and "exception was never retrieved" in text)


def _quiet_orbax_read_failures() -> None:
    """Process-wide, installed once before the first restore: drops the echoes of a failed
    Orbax 0.12 read. Its array reader catches BaseException, GeneratorExit included, so when the
    first read of a damaged checkpoint fails and asyncio closes the other pending reads each
    raises again and Python prints it ("Exception ignored in: <coroutine ...>" with a TensorStore
    spec: thousands of lines for one truncated file); reads that finish later print "Event loop
    is closed" from TensorStore's threads, and asyncio logs "Future exception was never
    retrieved" when it collects them. The failure itself is reported once, by
    restore_newest_readable; nothing else is dropped."""
    if getattr(sys.unraisablehook, "drops_orbax_echoes", False):
        return
    previous_unraisable, previous_excepthook = sys.unraisablehook, sys.excepthook

    def closed_loop(error) -> bool:
        return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"

    def unraisable_hook(unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if not ((code is not None and "orbax" in code.co_filename) or closed_loop(unraisable.exc_value)):
            previous_unraisable(unraisable)

    def excepthook(kind, value, traceback) -> None:
        if not closed_loop(value):
            previous_excepthook(kind, value, traceback)

    unraisable_hook.drops_orbax_echoes = True
    sys.unraisablehook, sys.excepthook = unraisable_hook, excepthook
    asyncio_logger = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxReadFailureFilter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_OrbaxReadFailureFilter())


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(mngr.directory), str(step))


def _reason(error: BaseException, limit: int = 300) -> str:
    """The first line of the error's innermost cause (Orbax wraps TensorStore's precise one,
    e.g. "OUT_OF_RANGE: Error reading ..."), shortened (tree mismatches run to thousands of lines)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= limit else text[:limit] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_read_config_json(workdir))


def _read_config_json(workdir: str) -> dict:
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise errors.CheckpointError(f"cannot read the run's config {path}: {error}") from error


# Keys whose value may differ between the runs that train one workdir (`check_same_run`).
RESUMABLE_CHANGES = (
    "training.num_steps", "training.log_every", "training.checkpoint_every", "training.keep_checkpoints",
    "training.eval_every", "training.eval_batch_size", "training.num_visualized", "training.nonfinite",
    "training.gradient_histogram_every",
    "data.paths", "data.source", "data.tfds_data_dir", "data.mpii_validation_file", "data.eval_split",
    "data.num_heldout", "data.skip_bad_examples", "data.max_skipped_fraction",
    "model.kernel_init", "model.output_init", "training.init_from",
)


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every key (outside RESUMABLE_CHANGES) whose value in `config`
    differs from the workdir's config.json, when the workdir holds checkpoints of a run; reads
    and changes nothing else. A workdir without checkpoints may start over with any config.

    Why these keys may change: they decide how long the run goes, what it logs, how often it
    saves and evaluates, where it finds the files and what a non-finite step or a bad example
    does, not what a step computes (extending num_steps is the common resume). Why every other
    key must match: model.* shapes the parameter tree or the computation (dtype included; the
    initialisers and training.init_from are exempt, unused once parameters exist);
    training.frozen and training.scheme what is trained; optimizer.* the optimiser state tree
    and every update; seed, the augmentation and label keys of data.* and
    training.global_batch_size decide which examples, crops and dropout masks step k sees (a
    resumed step k reads stream positions from (k - 1) x batch); loss.* the objective. A resume
    with any of them changed would silently be neither the old run nor a new one.

    A key that only one of them has (added to or removed from the code's configs since the run
    started) is logged, not refused: refusing would strand every workdir at each such change."""
    directory = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))):
        return
    if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
        logging.warning("%s has checkpoints but no %s: cannot check that this config is the run's", workdir,
                        CONFIG_FILE)
        return
    saved = _flatten(_read_config_json(workdir))
    now = _flatten(json.loads(config.to_json_best_effort()))
    for keys, what in ((now.keys() - saved.keys(), "not in the workdir's config.json (newer code): taking"),
                       (saved.keys() - now.keys(), "in the workdir's config.json only (older code): ignoring")):
        if keys:
            logging.warning("%s %s", what, ", ".join(f"config.{k} = {(now if k in now else saved)[k]!r}"
                                                     for k in sorted(keys)))
    changed = config_changes(workdir, config, RESUMABLE_CHANGES)
    if changed:
        lines = "\n".join(f"  config.{key}: {old!r} in the workdir, now {new!r}" for key, old, new in changed)
        raise errors.ConfigError(
            f"{workdir} holds checkpoints of a run with another config ({os.path.join(workdir, CONFIG_FILE)}); "
            f"resuming it with this one would change {len(changed)} key(s):\n{lines}\n"
            "Nothing in the workdir was changed. Use a new --workdir for a new run, or resume with the "
            "workdir's values.")


def config_changes(workdir: str | None, config: ml_collections.ConfigDict, exempt: tuple[str, ...] = (),
                   within: str = "", saved: dict | None = None) -> list[tuple[str, object, object]]:
    """(dotted key, value in the workdir's config.json (or in `saved`), value in `config`) of
    every key both have that starts with `within` and differs, except the keys (or key prefixes)
    in `exempt`. The one comparison behind `check_same_run` (resume) and `evaluate run --config`
    (same network)."""
    saved = _flatten(_read_config_json(workdir) if saved is None else saved)
    now = _flatten(json.loads(config.to_json_best_effort()))
    return [(key, saved[key], now[key]) for key in sorted(saved.keys() & now.keys())
            if key.startswith(within) and saved[key] != now[key]
            and not any(key == k or key.startswith(k + ".") for k in exempt)]


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"model.num_stages": 2, ...}: the leaves of a nested JSON dict by dotted key."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@contextlib.contextmanager
def locked(workdir: str, process_index: int = 0):
    """Holds the workdir's lock while the block runs, so that a second `train` on the same
    workdir is refused instead of overwriting this run's checkpoints.

    The lock is `fcntl.flock` on `<workdir>/.lock` (process i > 0 of a multi-process job:
    `.lock.<i>`: every process holds its own, so that each process of a second job is refused at
    once instead of waiting in a collective for a refused process 0). The kernel releases it
    when its process ends, however it ends; the file holds the holder's host, pid and start time
    for the message, and is emptied on release. A file that still names a holder while the lock
    is free was left by a killed run: it is taken over with a log line. A second run raises
    CheckpointError naming the holder, without writing anything. On a filesystem without locks
    the run goes on unguarded, with a warning."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.{process_index}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise errors.CheckpointError(
            f"{workdir} is in use by another training run ({holder or 'holder unknown'}; lock file {path}): two "
            "runs on one workdir would overwrite each other's checkpoints. Wait for it to end or stop it, "
            "or use another --workdir.") from None
    except OSError as error:  # ENOLCK, EOPNOTSUPP: a filesystem without locks
        os.close(fd)
        logging.warning("cannot lock %s (%s): a second run on this workdir would not be noticed", path, error)
        fd = None
    if fd is None:
        yield
        return
    try:
        previous = _read_holder(fd)
        if previous:
            logging.warning("taking over the lock %s of a run that ended without releasing it (%s)", path, previous)
        _write_holder(fd)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> str:
    """'host H, pid P, since T' from a lock file, '' if it is empty."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        holder = json.loads(text) if text else {}
        return f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}" if holder else ""
    except (ValueError, KeyError, TypeError):
        return f"lock file contents {text[:200]!r}"


def _write_holder(fd: int) -> None:
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since})
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode() + b"\n")


def open_latest(workdir: str) -> tuple[ocp.CheckpointManager, int]:
    """(read-only manager, newest step) of `<workdir>/checkpoints`, creating nothing; raises
    NoCheckpointError naming the directory when there is no workdir or no completed checkpoint."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(workdir):
        raise NoCheckpointError(f"{workdir}: no such directory (expected a training workdir with "
                                "checkpoints/ and config.json)")
    if not os.path.isdir(directory):
        raise NoCheckpointError(f"{workdir}: no checkpoint ({directory} does not exist); train "
                                "first with python -m cpm_jax.train --workdir ...")
    mngr = _manager(directory, ocp.CheckpointManagerOptions(read_only=True, create=False))
    step = mngr.latest_step()
    if step is None:
        raise NoCheckpointError(f"{workdir}: no completed checkpoint in {directory}")
    return mngr, step
