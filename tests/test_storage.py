import subprocess
import sys

import pytest

from harness import storage
from harness.errors import HarnessError
from harness.recipe import SweepFile

SPACE = SweepFile(params={"x": {"type": "int", "low": 0, "high": 3}})


def test_storages_by_scheme_and_a_typo_gets_a_suggestion(tmp_path):
    assert storage.kind("postgresql+psycopg2://u@h/db").parallel
    assert not storage.kind("sqlite:///optuna.db").parallel
    assert storage.journal_path("journal:///tmp/a/study.log") == "/tmp/a/study.log"
    assert storage.journal_path("journal:study.log") == "study.log"
    with pytest.raises(HarnessError, match="sweep.storage: unknown storage 'postgress'; did you "
                                           "mean postgresql"):
        storage.kind("postgress://u@h/db")


def test_journal_fails_the_running_trial_of_a_dead_worker_and_keeps_a_live_ones(tmp_path):
    import optuna
    url = f"journal:///{tmp_path}/deep/study.log"
    store = storage.open_storage(url, SPACE)
    study = optuna.create_study(study_name="s", storage=store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, live = study.ask(), study.ask()
    orphan.set_user_attr("worker", f"{storage.worker_id().rsplit(':', 1)[0]}:{dead.pid}")
    live.set_user_attr("worker", storage.worker_id())  # this process: alive
    done = study.ask()
    study.tell(done, 1.0)
    assert storage.fail_orphans(study, store, url) == [orphan.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {orphan.number: "FAIL", live.number: "RUNNING", done.number: "COMPLETE"}
    assert study.get_trials()[orphan.number].user_attrs["interrupted"] is True
    assert storage.fail_orphans(study, store, "sqlite:///x.db") == []  # heartbeats do that there


def test_a_storage_that_cannot_open_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match="sweep.storage: cannot open Optuna storage"):
        storage.open_storage(f"sqlite:///{tmp_path}/no/such/dir/optuna.db", SPACE)
