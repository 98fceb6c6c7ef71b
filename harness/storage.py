"""Optuna storages, a registry keyed by the URL's scheme.

- sqlite:///optuna.db: the default for one process (Optuna's docs: never for parallel work).
- postgresql://... or mysql://...: RDB storage for workers on several machines.
- journal:///path/study.log: Optuna's journal file (file-locked appends) for several workers on
  one machine, no server needed.

RDB storages beat a heartbeat, so a trial whose process died is failed after the grace period
and retried once. A journal has no heartbeat: a trial left RUNNING by a process that no longer
exists on this machine is failed at the next start instead, and retried like an interrupted one.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.recipe import SweepFile
from harness.registry import Registry


@dataclass(frozen=True)
class StorageKind:
    open: object  # (url, SweepFile) -> optuna storage
    parallel: bool  # safe for several worker processes
    heartbeat: bool


STORAGES: Registry[StorageKind] = Registry("storage")


def _rdb(url: str, space: SweepFile):
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    return RDBStorage(url, heartbeat_interval=space.heartbeat_s, grace_period=space.grace_s,
                      failed_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))


def _journal(url: str, space: SweepFile):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    path = journal_path(url)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


STORAGES.register("sqlite")(StorageKind(_rdb, parallel=False, heartbeat=True))
STORAGES.register("postgresql")(StorageKind(_rdb, parallel=True, heartbeat=True))
STORAGES.register("mysql")(StorageKind(_rdb, parallel=True, heartbeat=True))
STORAGES.register("journal")(StorageKind(_journal, parallel=True, heartbeat=False))


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
    try:
        return kind(url).open(url, space)
    except HarnessError:
        raise
    except Exception as e:  # a driver missing, a server down: one line naming the key
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HarnessError(f"cannot open Optuna storage: {first}", key="sweep.storage") from None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def fail_orphans(study, storage, url: str) -> list[int]:
    """Without a heartbeat: fail the RUNNING trials whose worker process is gone, marked
    interrupted so that the next start retries their parameters. Returns their numbers."""
    import optuna
    if kind(url).heartbeat:
        return []
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker and not _alive(worker):
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            failed.append(t.number)
    return failed
