"""Optuna storages, a registry keyed by the URL's scheme.

- sqlite:///optuna.db: the default for one process (Optuna's docs: never for parallel work).
- postgresql://... or mysql://...: RDB storage for workers on several machines.
- journal:///path/study.log: Optuna's journal file (file-locked appends) for several workers on
  one machine, no server needed.

Every trial records the host and process that run it (`worker`). A trial left RUNNING by a
process that no longer exists on this machine (kill -9, a crash) is failed at the next start at
once, whatever the storage, and retried like an interrupted one: a user reruns the command right
away, before any heartbeat grace period has passed. RDB storages also beat a heartbeat, which
catches a process that died on another machine after the grace period.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from harness.core.errors import HarnessError, Unavailable
from harness.config.recipe import SweepFile
from harness.core.registry import Registry
from harness.study.attrs import INTERRUPTED, TrialAttrs


@dataclass(frozen=True)
class StorageKind:
    open: object  # (url, SweepFile) -> optuna storage
    parallel: bool  # safe for several worker processes


STORAGES: Registry[StorageKind] = Registry("storage")


def _rdb(url: str, space: SweepFile):
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    return RDBStorage(url, heartbeat_interval=space.heartbeat_s, grace_period=space.grace_s,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))


def _journal(url: str, space: SweepFile):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    path = journal_path(url)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


STORAGES.register("sqlite")(StorageKind(_rdb, parallel=False))
STORAGES.register("postgresql")(StorageKind(_rdb, parallel=True))
STORAGES.register("mysql")(StorageKind(_rdb, parallel=True))
STORAGES.register("journal")(StorageKind(_journal, parallel=True))


def journal_path(url: str) -> str:
    """journal:///abs/study.log -> /abs/study.log; journal:study.log -> study.log"""
    path = url.split(":", 1)[1]
    return path[2:] if path.startswith("//") else path


def kind(url: str) -> StorageKind:
    scheme = url.split(":", 1)[0].split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    return STORAGES.get(scheme, key="sweep.storage")


def open_storage(url: str, space: SweepFile | None = None):
    """The storage at `url`; `space` gives the heartbeat settings (its defaults otherwise)."""
    space = space or SweepFile.model_construct()
    store = kind(url)
    try:
        return store.open(url, space)
    except (ImportError, ValueError, OSError) as e:  # no driver, a malformed URL, a bad path
        raise HarnessError(f"cannot open Optuna storage: {_first_line(e)}",
                           key="sweep.storage") from None
    except Exception as e:
        from sqlalchemy.exc import ArgumentError, OperationalError
        cause = getattr(e, "orig", None) or e  # the driver's own error
        if isinstance(e, OperationalError) and store.parallel:  # a server: down, or refusing us
            raise Unavailable("cannot reach the Optuna storage's database server: "
                              f"{_first_line(cause)}", key="sweep.storage") from e
        if isinstance(e, (ArgumentError, OperationalError)):  # SQLite: the file cannot be opened
            raise HarnessError(f"cannot open Optuna storage: {_first_line(cause)}",
                               key="sweep.storage") from None
        raise


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and parentheses: split after it
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None where /proc does not tell:
    with the pid it names one process, even after the pid is reused."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def worker_id() -> str:
    """host:pid:start of this process (start left out where /proc does not tell it)."""
    pid = os.getpid()
    start = _started(pid)
    return f"{socket.gethostname()}:{pid}" + (f":{start}" if start else "")


def _alive(worker: str) -> bool:
    host, pid, *start = worker.split(":")
    if host != socket.gethostname():
        return True  # another machine's process: not ours to judge (the heartbeat's)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    fields = _stat(int(pid))
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    # the pid is in use: by the trial's process, or by a new one that reuses the number
    return not start or not fields or len(fields) <= 19 or fields[19] == start[0]


def fail_orphans(study, storage) -> list[int]:
    """Fail the RUNNING trials whose worker process on this machine is gone, marked
    interrupted so that the next start retries their parameters. Returns their numbers."""
    import optuna
    failed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = TrialAttrs.of(t).worker
        if worker and not _alive(worker):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed
