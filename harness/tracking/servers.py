"""The MLflow server behind `harness ui` and `harness server`: started lean, and ended with
the harness process whatever ends it.

Lean: MLflow 3.17's `mlflow server` starts four uvicorn worker processes and, on a database
store, a job runner with seven huey consumers (GenAI jobs: online scoring, trace rollups), 15
processes that took 7-9 s to answer /health on the 2-core CPU. The harness uses none of the
jobs, and one uvicorn process serves its runs (MLflow's handlers run in uvicorn's threads):
`--workers 1` and MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (docs/benchmarks.md has the figures).

Ended with it: the server runs under a guard process, the leader of a new process group that
holds every process the server starts. The guard asks the kernel to signal it when the harness
process dies (Linux's PR_SET_PDEATHSIG), even by SIGKILL; then, or on SIGTERM or Ctrl-C, it
ends its whole group: SIGTERM, a grace, SIGKILL. No server process outlives the command.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

GRACE_S = 10.0  # what the server gets to stop on SIGTERM before its group is killed


def lean_env() -> dict:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def run(cmd: list[str]) -> int:
    """Runs `cmd` (the server) under a guard in a process group of its own. SIGTERM and SIGINT
    here reach the guard, which stops the group: 0 then; 1 if the server ended by itself."""
    guard = subprocess.Popen([sys.executable, "-m", "harness.tracking.servers", str(os.getpid()), *cmd],
                             start_new_session=True, env=lean_env())
    stopped = []

    def forward(signum, frame):
        stopped.append(signum)
        guard.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = guard.wait()
    return 0 if stopped else (1 if code else 0)


def _die_with(parent: int) -> None:
    """SIGTERM to this process when `parent` dies (Linux); elsewhere the group is ended by
    SIGTERM or Ctrl-C only."""
    if sys.platform.startswith("linux"):
        import ctypes
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_group(server: subprocess.Popen) -> int:
    """SIGTERM to every process of this group but the guard, a grace, then SIGKILL."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    group = os.getpgid(0)
    try:
        os.killpg(group, signal.SIGTERM)
        code = server.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        code = 128 + signal.SIGKILL
    except ProcessLookupError:
        code = server.wait()
    for pid in _members(group):  # what the server left behind (a job runner, workers)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code


def _members(group: int) -> list[int]:
    """The live processes of process group `group` but this one (Linux's /proc)."""
    out = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                out.append(int(name))
    return out


def guard(parent: int, cmd: list[str]) -> int:
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = subprocess.Popen(cmd)
    try:
        _die_with(parent)
        code = server.wait()
    except KeyboardInterrupt:
        return _stop_group(server)
    _stop_group(server)  # the server ended by itself: nothing of it stays
    return code


if __name__ == "__main__":
    sys.exit(guard(int(sys.argv[1]), sys.argv[2:]))
