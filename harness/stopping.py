"""Stop signals: SIGTERM and SIGINT end a command the way Ctrl-C does (MLflow runs KILLED,
Optuna trials failed and retried by the same command), whatever the harness is doing.

Clusters stop a job by sending SIGTERM to every process of it (Slurm, `timeout`, a container's
stop), then SIGKILL after a grace period. Three things turned that into a crash or into nothing:

- The training loop's loader workers get the signal too. torch's worker exits quietly only when
  its parent sent it; from anyone else it dies of it, and the parent's SIGCHLD handler (torch's
  watchdog for crashed workers) raised `DataLoader worker ... is killed by signal: Terminated`
  in place of the interrupt. The first stop signal replaces that SIGCHLD handler with one that
  does nothing: from then on the process is stopping, and a worker's death is expected.
- Python runs a signal handler wherever the main thread is. An exception raised inside a
  `__del__`, a weakref callback or code that catches BaseException is printed as "ignored" or
  lost, and the command went on as if no signal had come. So the request sticks: `check()`
  raises it again at the next phase (harness.errors.phase) or training step
  (harness.guards.stop_check).
- `timeout` signals its child, then the child's whole group: the second SIGTERM came while the
  first one's clean-up ran (ending MLflow runs, failing the Optuna trial) and broke it off. A
  stop signal after the first raises nothing; SIGKILL is what ends a stuck clean-up.

A background shell starts its children with SIGINT ignored; `install` sets it again, so
`kill -INT` stops them too.
"""
from __future__ import annotations

import signal

_requested: int | None = None  # the first stop signal's number


def install() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def _stop(signum, frame):
    global _requested
    if _requested is not None:
        return  # the clean-up of the first one is running
    _requested = signum
    # loader workers die with us: expected. A handler that does nothing, not SIG_DFL: a SIGCHLD
    # that came meanwhile is still run through the Python handler, and finding none there
    # Python prints "Signal 17 ignored due to race condition" with a traceback
    signal.signal(signal.SIGCHLD, _ignore)
    raise KeyboardInterrupt(f"signal {signum}")


def _ignore(signum, frame):
    pass


def requested() -> int | None:
    """The stop signal received, if any."""
    return _requested


def check() -> None:
    """Raises KeyboardInterrupt once a stop signal has come (again, where the first one was
    swallowed)."""
    if _requested is not None:
        raise KeyboardInterrupt(f"signal {_requested}")


def reset() -> None:
    """A new command in the same process (tests call harness.cli.main several times)."""
    global _requested
    _requested = None
