import subprocess
import sys

import pytest

from harness.study import storage
from harness.core.errors import HarnessError
from harness.config.recipe import SweepFile

SPACE = SweepFile(params={"x": {"type": "int", "low": 0, "high": 3}})


def test_storages_by_scheme_and_a_typo_gets_a_suggestion(tmp_path):
    assert storage.kind("postgresql+psycopg2://u@h/db").parallel
    assert not storage.kind("sqlite:///optuna.db").parallel
    assert storage.journal_path("journal:///tmp/a/study.log") == "/tmp/a/study.log"
    assert storage.journal_path("journal:study.log") == "study.log"
    with pytest.raises(HarnessError, match="sweep.storage: unknown storage 'postgress'; did you "
                                           "mean postgresql"):
        storage.kind("postgress://u@h/db")


@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_the_running_trial_of_a_dead_process_is_failed_at_once(tmp_path, backend):
    """Whatever the storage (a heartbeat's grace period has not passed when a user reruns at
    once): a trial whose process on this machine is gone fails, a live process's stays."""
    import os
    import socket

    import optuna
    url = (f"journal:///{tmp_path}/deep/study.log" if backend == "journal"
           else f"sqlite:///{tmp_path}/optuna.db")
    store = storage.open_storage(url, SPACE)
    study = optuna.create_study(study_name="s", storage=store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, reused, live = study.ask(), study.ask(), study.ask()
    host = socket.gethostname()
    orphan.set_user_attr("worker", f"{host}:{dead.pid}")
    # this process's pid, but a start time it does not have: the pid was reused
    reused.set_user_attr("worker", f"{host}:{os.getpid()}:1")
    live.set_user_attr("worker", storage.worker_id())  # this process: alive
    other = study.ask()
    other.set_user_attr("worker", f"another-host:{dead.pid}")  # not this machine's to judge
    done = study.ask()
    study.tell(done, 1.0)
    assert sorted(storage.fail_orphans(study, store)) == [orphan.number, reused.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {orphan.number: "FAIL", reused.number: "FAIL", live.number: "RUNNING",
                      other.number: "RUNNING", done.number: "COMPLETE"}
    assert study.get_trials()[orphan.number].user_attrs["interrupted"] is True


def test_a_storage_that_cannot_open_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match="sweep.storage: cannot open Optuna storage"):
        storage.open_storage(f"sqlite:///{tmp_path}/no/such/dir/optuna.db", SPACE)


def test_a_database_server_that_does_not_answer_is_not_bad_input(tmp_path):
    """A server that is down is told apart from a malformed URL or a missing driver: exit 1,
    the driver's own reason on the line, the cause kept."""
    import socket

    from harness.core.errors import Unavailable
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match="sweep.storage: cannot reach the Optuna storage's "
                                          "database server: .*refused") as got:
        storage.open_storage(f"postgresql+psycopg2://u@127.0.0.1:{port}/db", SPACE)
    assert got.value.exit_code == 1 and got.value.__cause__ is not None
    with pytest.raises(HarnessError, match="cannot open Optuna storage") as bad:
        storage.open_storage("postgresql+nosuchdriver://u@127.0.0.1/db", SPACE)
    assert bad.value.exit_code == 2
