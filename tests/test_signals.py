"""Stop signals at every moment of a sweep, as a scheduler sends them (to the whole process
group: the harness and its loader workers), with two loader workers a trial: the command ends
with one line, leaves no MLflow run or Optuna trial RUNNING and no process behind, and the same
command then finishes the sweep with every trial run once. Moments are the harness's own
progress lines (and the Trainer's first logged step), not sleeps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from harness.config import recipe

# moment -> the lines to wait for, in order; the signal goes as soon as the last one is read
MOMENTS = {
    "set-up": ["] device "],
    "scoring before": ["scoring the starting model"],
    "training": ["trial-0: training", "{'loss'"],  # loader workers are running
    "scoring after": ["trial-0: scoring the tuned model"],
    "records": ["evaluation records of trial-"],
    "held out": ["scoring the chosen trial on math_heldout"],
}
CASES = [("SIGTERM", m) for m in MOMENTS] + [
    ("SIGINT", "training"), ("SIGTERM+SIGKILL", "training"), ("SIGTERM+SIGKILL", "records")]
# SIGTERM+SIGKILL: a clean-up that outlasts the scheduler's grace period. The command runs with
# its first clean-up step (a run ended KILLED) held until the SIGKILL comes; the test sends the
# SIGKILL once the held step said so. A real grace of seconds would race the clean-up, which
# mostly ends within it, and the case would repeat the SIGTERM one.
HELD = "test: clean-up held"
HOLD_CLEAN_UP = f"""
import sys, threading
from harness.tracking import tracker
own = tracker.Tracker._end
def _end(self, status):
    if status == "KILLED":
        print({HELD!r}, file=sys.stderr, flush=True)
        threading.Event().wait()
    own(self, status)
tracker.Tracker._end = _end
from harness.commands.cli import main
sys.exit(main(sys.argv[1:]))
"""


RATES = [1e-4, 1e-3]


def _recipe(recipe_dict, tmp_path, write_recipe, method: str = "sft", storage: str = "sqlite",
            points: int = 1, steps: int = 4):
    """A grid sweep of `points` learning rates (one keeps CI short; the workers split two).
    `steps`: 4 where the signal must land in training after its first logged step; 1 for a
    moment before or after training (each step costs ~1 s on the 2-core CPU: TRL's fused LM
    head over the tiny model's 49k vocabulary; a command stopped and run again trains twice)."""
    rates = RATES[:points]
    (tmp_path / "grid.yaml").write_text(
        f"n_trials: {points}\nsampler: grid\nparams:\n"
        f"  trainer.learning_rate: {{type: categorical, choices: {rates}}}\n")
    d = dict(recipe_dict, tracking=dict(recipe_dict["tracking"], log_evaluations="all"))
    d["trainer"] = dict(d["trainer"], max_steps=steps, dataloader_num_workers=2)
    d["sweep"] = dict(d["sweep"], space=str(tmp_path / "grid.yaml"))
    if storage == "journal":
        d["sweep"]["storage"] = f"journal:///{tmp_path}/study.log"
    if method == "grpo":
        d.update(method="grpo", rewards=[{"name": "math_answer"}])
        d["trainer"] = dict(d["trainer"], max_completion_length=6, num_generations=2,
                            max_steps=2)
        d["trainer"].pop("max_length")
    path = write_recipe(d)
    d["sweep_rates"] = rates  # the test's own note, not a recipe key
    return d, path


def _stop_at(path: str, waits: list[str], how: str, workers: int = 1,
             command: list[str] | None = None) -> tuple[int, str]:
    """`harness sweep` (or `command`) in a new process group; the signal goes to the group once
    `waits` were read. Returns (exit code, all its output)."""
    start = ["-c", HOLD_CLEAN_UP] if how == "SIGTERM+SIGKILL" else ["-m", "harness"]
    argv = [sys.executable, *start, *(command or ["sweep", path, "--workers", str(workers)])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=os.path.dirname(path))
    seen, wanted = [], list(waits)
    for line in proc.stdout:
        seen.append(line)
        if wanted and wanted[0] in line:
            wanted.pop(0)
            if not wanted:
                break
    assert not wanted, f"never saw {wanted[0]!r}:\n{''.join(seen)}"
    os.killpg(proc.pid, signal.SIGINT if how == "SIGINT" else signal.SIGTERM)
    if how == "SIGTERM+SIGKILL":  # the grace runs out while the clean-up is held
        for line in proc.stdout:
            seen.append(line)
            if HELD in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    seen.append(proc.stdout.read())
    code = proc.wait(timeout=120)
    _no_process_left(proc.pid)
    return code, "".join(seen)


def _no_process_left(group: int) -> None:
    """Every process of the group is gone: loader workers and sweep workers too."""
    for _ in range(100):
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(group, signal.SIGKILL)
    raise AssertionError("processes of the stopped command were still running 10 s later")


def _running(d: dict) -> tuple[dict[str, str], list[int]]:
    """The MLflow runs (id -> harness.kind) and Optuna trials (numbers) left RUNNING."""
    import mlflow
    import optuna

    from harness.study import storage
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    exp = client.get_experiment_by_name(d["name"])
    runs = {r.info.run_id: r.data.tags.get("harness.kind", "?") for r in
            client.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"} \
        if exp is not None else {}
    study_storage = storage.open_storage(d["sweep"]["storage"], recipe.SweepFile(
        params={"x": {"type": "int", "low": 0, "high": 1}}))
    trials = []
    if d["name"] in [s.study_name for s in optuna.get_all_study_summaries(study_storage)]:
        study = optuna.load_study(study_name=d["name"], storage=study_storage)
        trials = [t.number for t in study.trials if t.state.name == "RUNNING"]
    return runs, trials


def _nothing_running(d: dict) -> None:
    assert _running(d) == ({}, [])


def _same_command(argv: list[str], capsys) -> None:
    """The command again, at once, in this process (the interpreter's start-up is the one
    thing it skips); its signal handlers put back after it."""
    from harness.commands import cli
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
    try:
        code = cli.main(argv)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 0, capsys.readouterr().err[-3000:]


def _finishes_once_each(d: dict, path: str, capsys) -> None:
    """The same command finishes the sweep: each grid point COMPLETE exactly once, one sweep
    run, nothing RUNNING, the report written."""
    import mlflow
    import optuna

    from harness.study import storage
    _same_command(["sweep", path], capsys)
    _nothing_running(d)
    study = optuna.load_study(study_name=d["name"], storage=storage.open_storage(
        d["sweep"]["storage"], recipe.SweepFile(params={"x": {"type": "int", "low": 0,
                                                              "high": 1}})))
    done = sorted(t.params["trainer.learning_rate"] for t in study.trials
                  if t.state.name == "COMPLETE")
    assert done == sorted(d["sweep_rates"]), [(t.state.name, t.params) for t in study.trials]
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name(d["name"]).experiment_id])
    assert sum(r.data.tags.get("harness.kind") == "sweep" for r in runs) == 1
    finished = [r for r in runs if r.data.tags.get("harness.kind") == "trial"
                and r.info.status == "FINISHED"]
    assert len(finished) == len(d["sweep_rates"])
    assert os.path.isfile(os.path.join(d["reports_dir"], d["name"], "report.md"))


def _ended_cleanly(code: int, out: str, how: str) -> None:
    assert "Traceback" not in out and "unexpected" not in out, out[-3000:]
    if how == "SIGTERM+SIGKILL":  # the grace ran out: the next start repairs what it left
        assert code == -signal.SIGKILL and HELD in out, out[-3000:]
        return
    assert code == 130, out[-3000:]
    assert out.rstrip().splitlines()[-1] == \
        "interrupted: runs marked KILLED; the same command resumes", out[-3000:]


@pytest.mark.parametrize("how, moment", CASES)
@pytest.mark.slow
def test_a_stop_signal_at_any_moment_ends_cleanly_and_the_sweep_resumes(
        recipe_dict, tmp_path, write_recipe, how, moment, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d, path = _recipe(recipe_dict, tmp_path, write_recipe,
                      steps=4 if moment == "training" else 1)
    code, out = _stop_at(path, MOMENTS[moment], how)
    _ended_cleanly(code, out, how)
    if how != "SIGTERM+SIGKILL":
        _nothing_running(d)
        _finishes_once_each(d, path, capsys)
        return
    # killed inside its clean-up: the sweep's run (ended last) was left RUNNING, with the
    # trial's run and its Optuna trial where it trained, for the next start to repair (the
    # trial failed and retried, the runs ended KILLED). Which record runs were open when the
    # signal came while logging them is the signal's timing, so "records" names only the sweep.
    runs, trials = _running(d)
    assert "sweep" in runs.values(), runs
    if moment == "training":
        assert sorted(runs.values()) == ["sweep", "trial"] and trials == [0], (runs, trials)
    _finishes_once_each(d, path, capsys)
    import mlflow
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    for run_id, kind in runs.items():  # the sweep's run is resumed; the trial's, killed
        assert client.get_run(run_id).info.status == \
            ("FINISHED" if kind == "sweep" else "KILLED"), kind


@pytest.mark.slow
def test_sigterm_during_a_grpo_rollout(recipe_dict, tmp_path, write_recipe, capsys,
                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    d, path = _recipe(recipe_dict, tmp_path, write_recipe, method="grpo")
    code, out = _stop_at(path, ["trial-0: training"], "SIGTERM")  # the first step samples
    _ended_cleanly(code, out, "SIGTERM")
    _nothing_running(d)
    _finishes_once_each(d, path, capsys)


@pytest.mark.slow
@pytest.mark.postgres
def test_sigterm_to_a_two_worker_sweep(recipe_dict, tmp_path, write_recipe, pg_database,
                                       capsys, monkeypatch):
    """Two worker processes (a journal study, runs in PostgreSQL), stopped while they train."""
    monkeypatch.chdir(tmp_path)
    recipe_dict = dict(recipe_dict, tracking={"uri": pg_database()})
    d, path = _recipe(recipe_dict, tmp_path, write_recipe, storage="journal", points=2)
    code, out = _stop_at(path, ["trial-", "{'loss'"], "SIGTERM", workers=2)
    _ended_cleanly(code, out, "SIGTERM")
    _nothing_running(d)
    _finishes_once_each(d, path, capsys)


def test_a_swallowed_stop_signal_is_raised_again_at_the_next_phase_or_step():
    """Python runs a signal handler wherever the main thread is; inside a __del__ the interrupt
    it raises is printed as ignored and lost. The request sticks: the next phase raises it, and
    the next training step (harness.guards.stop_check)."""
    from harness.train import guards
    from harness.core import stopping
    from harness.core.errors import phase
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), \
        signal.getsignal(signal.SIGCHLD)
    stopping.reset()
    stopping.install()
    swallowed, hook = [], sys.unraisablehook
    sys.unraisablehook = lambda u: swallowed.append(u.exc_type)
    try:
        class StoppedInside:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)  # its KeyboardInterrupt is swallowed here
        StoppedInside()
        assert swallowed == [KeyboardInterrupt]
        assert stopping.requested() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt), phase("the next phase"):
            pass
        with pytest.raises(KeyboardInterrupt):
            guards.stop_check().on_step_end(None, None, None)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal: the clean-up is not broken off
    finally:
        sys.unraisablehook = hook
        for sig, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD), before):
            signal.signal(sig, handler)
        stopping.reset()


@pytest.mark.parametrize("command, moment", [
    ("train", [": training", "{'loss'"]), ("train", ["evaluation records of"]),
    ("eval", ["scoring before"])])
@pytest.mark.slow
def test_sigterm_to_train_and_eval(recipe_dict, tmp_path, write_recipe, command, moment, capsys,
                                   monkeypatch):
    """`harness train` and `harness eval` stopped at a moment of theirs: one line, nothing
    RUNNING, and the same command then runs to the end."""
    d, path = _recipe(recipe_dict, tmp_path, write_recipe,
                      steps=4 if "{'loss'" in moment else 1)
    model = d["model"]["name"]
    argv = ["train", path] if command == "train" else \
        ["eval", model, "--before", model, "--recipe", path]
    code, out = _stop_at(path, moment, "SIGTERM", command=argv)
    _ended_cleanly(code, out, "SIGTERM")
    _nothing_running(d)
    monkeypatch.chdir(tmp_path)
    _same_command(argv, capsys)
    _nothing_running(d)


def test_a_stop_signal_waits_for_a_database_write_to_end():
    """A KeyboardInterrupt cut into a store's write left its transaction open, and the clean-up
    then found the SQLite store locked: inside database code the signal waits, then is raised
    as soon as the write returned."""
    from harness.core import stopping
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), \
        signal.getsignal(signal.SIGCHLD)
    stopping.reset()
    stopping.install()
    # a function whose module is SQLAlchemy's, as a store's write is; it notes its own end,
    # since the interrupt may land on any line after it returns (50 ms later at most, but one
    # landing before a `with pytest.raises` here once crashed a loaded xdist worker)
    code = ("def write():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    until = time.monotonic() + 0.3\n"
            "    while time.monotonic() < until:\n"
            "        pass\n"
            "    ended.append(time.monotonic())\n"
            "    return 'written'\n")
    ended: list[float] = []
    space = {"__name__": "sqlalchemy.engine.writes", "os": os, "signal": signal, "time": time,
             "ended": ended}
    exec(compile(code, "<sqlalchemy>", "exec"), space)
    try:
        with pytest.raises(KeyboardInterrupt):
            space["write"]()
            time.sleep(5)
        raised = time.monotonic()
        assert ended, "the interrupt cut into the write"
        assert stopping.requested() == signal.SIGTERM
        assert raised - ended[0] < 2.5  # raised once the write returned, not at sleep's end
    finally:
        for sig, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD), before):
            signal.signal(sig, handler)
        stopping.reset()


def test_a_worker_the_group_signal_reached_first_is_the_stop(recipe_dict):
    """The race a scheduler's group signal can start: a loader worker dies of SIGTERM and torch
    raises its dead-worker error before the harness's own handler has run. Here the worker is
    signalled from the first training step, and the harness 0.3 s later: training ends with
    the stop (KeyboardInterrupt, the request recorded), not with torch's RuntimeError."""
    import multiprocessing

    from transformers import TrainerCallback

    from harness.data import trainset
    from harness import models
    from harness.core import stopping
    from harness.train import trainers
    r = recipe.build(recipe_dict, "t.yaml", {"trainer.dataloader_num_workers": 1,
                                             "trainer.max_steps": 50})
    plan = models.device_plan(r.model)
    tok = models.load_tokenizer(r.model, r.model.name)
    model = models.load_model(r.model, plan, r.model.name, trainers.kind(r).task)
    train_ds, eval_ds, _ = trainset.load_train(r.data, r.seed, trainers.kind(r).data_kind)

    import threading

    timers = []

    class KillTheWorkerFirst(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            for w in multiprocessing.active_children():
                os.kill(w.pid, signal.SIGTERM)
            timers.append(threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)))
            timers[-1].start()

    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)]
    stopping.reset()
    stopping.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            trainers.train(r, model, tok, train_ds, eval_ds, plan, recipe_dict["output_dir"],
                        callbacks=[KillTheWorkerFirst()], report_to=[])
        assert stopping.requested() == signal.SIGTERM
    finally:
        for t in timers:  # none may fire once the handlers are restored (SIGTERM ends a worker)
            t.cancel()
            t.join()
        for sig, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD), before):
            signal.signal(sig, handler)
        stopping.reset()


@pytest.mark.parametrize("message, then, stops", [
    # torch's SIGCHLD handler, as a sweep printed it when the race was lost: the stop the
    # signal that killed the worker names
    ("DataLoader worker (pid 14783) is killed by signal: Terminated. ", None, signal.SIGTERM),
    ("DataLoader worker (pid 14783) is killed by signal: Interrupt. ", None, signal.SIGINT),
    ("DataLoader worker (pid 14783) is killed by signal: Segmentation fault. ", None, None),
    # the data queue's watchdog, as the test above met it: the group's signal still on its way
    ("DataLoader worker (pid(s) 17765) exited unexpectedly", 0.2, signal.SIGTERM),
    ("DataLoader worker (pid(s) 17765, 17766) exited unexpectedly", None, None),  # a crash
    ("CUDA out of memory", None, None),  # not a worker's death: returned at once
])
def test_a_dead_workers_error_is_the_stop_only_when_a_stop_signal_killed_it(message, then,
                                                                             stops, monkeypatch):
    import threading

    from harness.core import stopping
    if then or "CUDA" in message:
        # a grace far longer than the signal's delay: a loaded CI machine that starts the
        # timer's thread late still delivers within it, and one not waiting shows at once
        monkeypatch.setattr(stopping, "GRACE_S", 30.0)
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)]
    stopping.reset()
    stopping.install()
    timer = threading.Timer(then, os.kill, (os.getpid(), signal.SIGTERM)) if then else None
    try:
        if timer:
            timer.start()
        if stops:
            with pytest.raises(KeyboardInterrupt):
                stopping.stopped_worker(RuntimeError(message))
            assert stopping.requested() == stops
        else:
            t = time.monotonic()
            stopping.stopped_worker(RuntimeError(message))
            assert stopping.requested() is None
            if "CUDA" in message:
                assert time.monotonic() - t < 10, "waited for a stop signal"
    finally:
        if timer:  # fired already (it raised above); joined so none comes after the restore
            timer.cancel()
            timer.join()
        for sig, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD), before):
            signal.signal(sig, handler)
        stopping.reset()


def test_a_stop_swallowed_by_python_prints_no_traceback(capsys):
    """A signal whose KeyboardInterrupt Python cannot raise (here a `__del__`; in a full suite
    importlib's module-lock callback) is printed as "Exception ignored" with a traceback: not
    for our own stop, which is raised again at the next phase. Anything else still prints."""
    from harness.core import stopping
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)]
    hook, reached = sys.unraisablehook, []
    sys.unraisablehook = lambda u: reached.append(u.exc_type)  # what was there before
    stopping.reset()
    stopping.install()
    try:
        class StoppedInside:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)

        class BrokenInside:
            def __del__(self):
                raise ValueError("not ours")
        StoppedInside()
        assert reached == [] and "Exception ignored" not in capsys.readouterr().err
        assert stopping.requested() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            stopping.check()
        BrokenInside()
        assert reached == [ValueError]
    finally:
        sys.unraisablehook = hook
        for sig, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGCHLD), before):
            signal.signal(sig, handler)
        stopping.reset()
