"""Stop signals: SIGTERM and SIGINT end a command the way Ctrl-C does (MLflow runs KILLED,
Optuna trials failed and retried by the same command), whatever the harness is doing.

Clusters stop a job by sending SIGTERM to every process of it (Slurm, `timeout`, a container's
stop), then SIGKILL after a grace period. Four things turned that into a crash or into nothing:

- The training loop's loader workers get the signal too. torch's worker exits quietly only when
  its parent sent it; from anyone else it dies of it, and the parent's SIGCHLD handler (torch's
  watchdog for crashed workers) raised `DataLoader worker ... is killed by signal: Terminated`
  in place of the interrupt. The first stop signal replaces that SIGCHLD handler with one that
  does nothing: from then on the process is stopping, and a worker's death is expected.
- Python runs a signal handler wherever the main thread is. An exception raised inside a
  `__del__`, a weakref callback or code that catches BaseException is printed as "ignored" (a
  traceback on the terminal) or lost, and the command went on as if no signal had come. So the
  request sticks: `check()` raises it again at the next phase (harness.errors.phase) or training
  step (harness.guards.stop_check), and the "ignored" print of our own stop is left out.
- A signal that comes while the main thread is inside a database call (an MLflow or Optuna
  store's write, SQLAlchemy, the SQLite driver) is raised 50 ms later, once it is out: cut
  halfway, the write kept its transaction open, and the clean-up's own writes then failed
  ("database is locked").
- `timeout` signals its child, then the child's whole group: the second SIGTERM came while the
  first one's clean-up ran (ending MLflow runs, failing the Optuna trial) and broke it off. A
  stop signal after the first raises nothing; SIGKILL is what ends a stuck clean-up.

- The group's signal is queued to its processes one by one, the loader workers first: a worker
  could die of it, and torch's SIGCHLD handler raise `DataLoader worker (pid N) is killed by
  signal: Terminated` (or its queue watchdog `... exited unexpectedly`) before this process had
  run its own handler (one run in a loaded full test suite). Training turns that error into
  the stop itself (`stopped_worker`).

A background shell starts its children with SIGINT ignored; `install` sets it again, so
`kill -INT` stops them too.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading

_requested: int | None = None  # the first stop signal's number
_waiting = False  # raised once the main thread is out of a database call
# code a KeyboardInterrupt must not cut into: a store's write stopped halfway keeps its
# transaction open, and SQLite then refused the clean-up's own writes ("database is locked")
DATABASE = ("sqlalchemy", "sqlite3", "psycopg2", "alembic", "optuna.storages", "mlflow.store")


def install() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if getattr(sys.unraisablehook, "__module__", None) != __name__:
        global _unraisable
        _unraisable = sys.unraisablehook
        sys.unraisablehook = _swallowed


_unraisable = sys.unraisablehook


def _swallowed(unraisable) -> None:
    """Python prints an exception it cannot raise (inside a `__del__`, a weakref callback such
    as importlib's module-lock clean-up) as "Exception ignored in ..." with its traceback. Our
    own stop, swallowed there, is not lost (check() raises it again at the next phase or step),
    so it is not printed; anything else goes to the hook that was there before."""
    if unraisable.exc_type is KeyboardInterrupt and _requested is not None:
        return
    _unraisable(unraisable)


def _stop(signum, frame):
    global _requested, _waiting
    if _requested is not None and not _waiting:
        return  # the clean-up of the first one is running
    if _requested is None:
        _requested = signum
        # loader workers die with us: expected. A handler that does nothing, not SIG_DFL: a
        # SIGCHLD that came meanwhile still goes to the Python handler, and finding none there
        # Python prints "Signal 17 ignored due to race condition" with a traceback
        signal.signal(signal.SIGCHLD, _ignore)
    if _inside_database(frame):  # the same signal again in 50 ms, to raise it then
        _waiting = True
        again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        again.daemon = True  # never what keeps an ending process alive
        again.start()
        return
    _waiting = False
    raise KeyboardInterrupt(f"signal {_requested}")


def _inside_database(frame) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(DATABASE):
            return True
        frame = frame.f_back
    return False


def _ignore(signum, frame):
    pass


#: torch's errors for a dead loader worker: its SIGCHLD handler's (which names the signal) and
#: the data queue's watchdog's ("exited unexpectedly"); where a torch version words them
#: otherwise, the error goes on as an unexpected one, as before
_WORKER_DIED = re.compile(r"DataLoader worker \(pid(?:\(s\))? [\d, ]+\) (?:is killed by "
                          r"signal: (\w+)|exited unexpectedly)")
GRACE_S = 1.0  # how long a dead worker's error waits for the group's signal to reach us


def stopped_worker(e: BaseException) -> None:
    """When `e` is torch's error for a dead loader worker and a stop signal killed it, raises
    the stop (KeyboardInterrupt) in its place; returns for any other error. A worker killed by
    SIGTERM or SIGINT was stopped from outside: the stop, recorded as if this process's own
    handler had run. A worker that died of something unnamed: the group's signal, if one is on
    its way, reaches this process within GRACE_S, and its handler raises the stop here."""
    global _requested
    m = _WORKER_DIED.search(str(e))
    if m is None:
        return
    if m.group(1) in ("Terminated", "Interrupt"):
        if _requested is None:
            _requested = signal.SIGTERM if m.group(1) == "Terminated" else signal.SIGINT
            signal.signal(signal.SIGCHLD, _ignore)
        raise KeyboardInterrupt(f"signal {_requested}") from e
    import time
    end = time.monotonic() + GRACE_S
    while time.monotonic() < end:  # a stop signal's handler raises inside the sleep
        check()
        time.sleep(0.05)


def requested() -> int | None:
    """The stop signal received, if any."""
    return _requested


def check() -> None:
    """Raises KeyboardInterrupt once a stop signal has come (again, where the first one was
    swallowed)."""
    global _waiting
    if _requested is not None:
        _waiting = False
        raise KeyboardInterrupt(f"signal {_requested}")


def reset() -> None:
    """A new command in the same process (tests call harness.cli.main several times)."""
    global _requested, _waiting
    _requested, _waiting = None, False
