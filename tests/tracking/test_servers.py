"""`harness ui` / `harness server` (harness.tracking.servers): a lean MLflow server that leaves no
process behind, however the harness process ends."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import wait_until_up


def _group_of(pid: int) -> list[int]:
    """The live processes whose parent chain reaches `pid`."""
    def stat(p):
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    fields = stat(name)
                except OSError:
                    continue
                if int(fields[1]) == parent and fields[0] != "Z":
                    out.append(int(name))
                    todo.append(int(name))
    return out


def _alive(pids: list[int]) -> list[int]:
    left = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    left.append(p)
        except OSError:
            pass
    return left


@pytest.mark.slow  # a server process started and stopped in each
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("command,sig", [("server", "SIGKILL"), ("server", "SIGTERM"),
                                         ("ui", "SIGINT")])
def test_the_server_starts_lean_and_nothing_outlives_the_harness_process(tmp_path, command,
                                                                         sig):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--backend-store-uri", f"sqlite:///{tmp_path}/m.db", "--port", str(port)]
    if command == "server":
        args += ["--artifacts-destination", str(tmp_path / "art")]
    proc = subprocess.Popen([sys.executable, "-m", "harness", command, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_up(proc, f"http://127.0.0.1:{port}", command)
    tree = _group_of(proc.pid)
    # the guard, mlflow's command and one uvicorn process: no uvicorn workers, no job runner
    assert len(tree) <= 3, [open(f"/proc/{p}/cmdline").read() for p in _alive(tree)]
    proc.send_signal(getattr(signal, sig))
    code = proc.wait(timeout=60)
    if sig != "SIGKILL":
        assert code == 0
        assert "Traceback" not in proc.stderr.read()
    for _ in range(60):
        if not _alive(tree):
            break
        time.sleep(0.5)
    left = _alive(tree)
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "server processes outlived the harness process"
