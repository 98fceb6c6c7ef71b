"""MLflow GenAI evaluation records (tracking.log_evaluations): each golden example scored by a
run as a trace with one assessment per metric, equal to the harness's own per-example scores,
in evaluation runs of their own (`<name>/before`, `<name>/after`: MLflow 3's UI lists runs
without a model output as evaluation runs, and compares them there)."""
import math

import pytest

pytestmark = pytest.mark.fenced  # trace_store: both writers

def _scores(run_id: str) -> dict:
    """{(prompt, assessment name): value} of the run's evaluation traces."""
    import mlflow

    from harness.tracking.reader import Reader
    return Reader(mlflow.get_tracking_uri()).evaluation_scores(run_id)


def _expected(saved: dict, set_name: str = "math") -> dict:
    res = saved[set_name]
    return {(ex["prompt"], f"{set_name}/{m}"): ex[m]
            for ex in res["examples"] for m in res["metrics"]}


def _same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9) or (math.isnan(v) and math.isnan(got[k])), k


@pytest.fixture(params=["bulk", "genai.evaluate"])
def writer(request, monkeypatch):
    """Both ways records are written: in bulk (harness.tracking.records, the tested MLflow
    versions) and
    by mlflow.genai.evaluate (outside them: the fence off)."""
    from harness.core import fences
    if request.param == "genai.evaluate":
        monkeypatch.setitem(fences.TESTED, "trace_store", {"mlflow": "<0"})
    fences.allowed.cache_clear()
    yield request.param
    fences.allowed.cache_clear()


@pytest.mark.slow
def test_a_train_run_has_before_and_after_evaluation_runs_with_the_harness_scores(recipe_dict,
                                                                                 client, writer):
    from harness.config import recipe
    from harness.pipeline import run
    from harness.tracking.reader import KIND_TAG, MODEL_TAG
    from harness.tracking.tracker import Tracker
    r = recipe.build(recipe_dict, "t.yaml")
    outcome, _ = run.train_and_report(r, Tracker(r))
    saved = Tracker(r).load_json(outcome.run_id, "eval/results.json")
    trained = client.get_run(outcome.run_id)
    children = {c.data.tags[KIND_TAG]: c for c in client.search_runs(
        [trained.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'")}
    assert set(children) == {"before", "after"}
    for side, child in children.items():
        assert child.info.run_name == f"tiny/{side}" and child.info.status == "FINISHED"
        assert trained.data.tags[f"harness.evaluations.{side}"] == child.info.run_id
        assert not child.outputs.model_outputs  # so the UI lists it among evaluation runs
        got = _scores(child.info.run_id)
        _same(got, _expected(saved[side]))
        assert len({p for p, _ in got}) == 4  # one trace an example
    after = children["after"]
    # the scorers' means are metrics of the evaluation run, beside the harness's own
    assert after.data.metrics["math/numeric_accuracy/mean"] == pytest.approx(
        trained.data.metrics["after/math/numeric_accuracy"])
    import mlflow
    traces = mlflow.search_traces(run_id=after.info.run_id, return_type="list")
    # the after records are linked to the run's LoggedModel, and to the run
    assert {t.info.request_metadata.get("mlflow.modelId") for t in traces} == {
        trained.data.tags[MODEL_TAG]}
    assert {t.info.request_metadata.get("mlflow.sourceRun") for t in traces} == {
        after.info.run_id}
    assert after.data.tags["mlflow.runType"] == "genai_evaluate"
    assert [d.dataset.name for d in after.inputs.dataset_inputs] == ["dataset"]
    # in the golden set's order, as the UI lists them (newest first)
    want = [e["prompt"] for e in saved["after"]["math"]["examples"]]
    assert [t.data.spans[0].inputs["prompt"] for t in traces][::-1] == want
    # another recipe seeded alike (seed 42, as every shipped recipe), into the same store: its
    # trace ids must not repeat the first's (issue 48: ids drawn from the seeded global
    # generator collided across experiments and the second run's records were lost)
    other = recipe.build(dict(recipe_dict, name="tiny-again"), "t2.yaml",
                         {"trainer.learning_rate": 5e-4})
    assert other.seed == r.seed
    second, _ = run.train_and_report(other, Tracker(other))
    again = client.get_run(second.run_id).data.tags
    for side in ("before", "after"):
        _same(_scores(again[f"harness.evaluations.{side}"]),
              _expected(Tracker(other).load_json(second.run_id, "eval/results.json")[side]))
    assert not {t.info.trace_id for t in traces} & {t.info.trace_id for t in mlflow.search_traces(
        run_id=again["harness.evaluations.after"], return_type="list")}


@pytest.mark.slow
def test_a_sweep_records_the_start_and_only_the_best_trial(recipe_dict, client):
    """The start's records and the best trial's alone, none logged twice by a resume with
    nothing to run. Then a kill -9 while the sweep logged the start's records: the evaluation
    run stays RUNNING and the sweep run has no `harness.evaluations.before`. The same command
    ends that run KILLED and logs the records again (the store is put in that state by hand: a
    real kill lands at a random point). One sweep for both: the repair's own test ran another."""
    import optuna

    from harness.config import recipe
    from harness.study import sweep
    from harness.tracking.reader import EVALUATION_OF_TAG, KIND_TAG
    from harness.tracking.tracker import Tracker
    r = recipe.build(dict(recipe_dict, sweep=dict(recipe_dict["sweep"], heldout=0)), "t.yaml")
    out = sweep.run_sweep(r)
    study = optuna.load_study(study_name="tiny", storage=recipe_dict["sweep"]["storage"])
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    saved = Tracker(r).load_json(best_run, "eval/results.json")
    parent = client.get_run(out.parent_run_id)
    _same(_scores(parent.data.tags["harness.evaluations.before"]), _expected(saved["before"]))
    after_run = client.get_run(best_run).data.tags["harness.evaluations.after"]
    _same(_scores(after_run), _expected(saved["after"]))
    assert client.get_run(after_run).info.run_name == f"trial-{study.best_trial.number}/after"
    for t in study.trials:
        tags = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags
        assert ("harness.evaluations.after" in tags) == (t.number == study.best_trial.number)
    # resumed with nothing left to run: the best trial's records are not logged twice
    sweep.run_sweep(r)
    assert client.get_run(best_run).data.tags["harness.evaluations.after"] == after_run

    # the start's records cut off by a kill
    exp = parent.info.experiment_id
    stale = client.create_run(exp, run_name="tiny/before", tags={
        KIND_TAG: "before", EVALUATION_OF_TAG: parent.info.run_id,
        "mlflow.parentRunId": parent.info.run_id}).info.run_id
    client.delete_tag(parent.info.run_id, "harness.evaluations.before")
    sweep.run_sweep(r)  # the study is complete: nothing to train, the records to repair
    assert client.get_run(stale).info.status == "KILLED"
    again = client.get_run(parent.info.run_id).data.tags["harness.evaluations.before"]
    assert again != stale and client.get_run(again).info.status == "FINISHED"
    assert not [x for x in client.search_runs([exp]) if x.info.status == "RUNNING"]


@pytest.mark.slow
def test_none_logs_no_records(recipe_dict, client):
    from harness.config import recipe
    from harness.pipeline import run
    from harness.tracking.tracker import Tracker
    r = recipe.build(dict(recipe_dict, tracking=dict(recipe_dict["tracking"],
                                                     log_evaluations="none")), "t.yaml")
    outcome, _ = run.train_and_report(r, Tracker(r))
    runs = client.search_runs([client.get_run(outcome.run_id).info.experiment_id])
    assert len(runs) == 1


@pytest.mark.slow
def test_a_complete_trials_records_cut_off_by_a_kill_are_written_by_the_next_start(
        recipe_dict, client):
    """A kill -9 can land after Optuna has the trial COMPLETE and before its records are all in
    (the more so where they are written beside the next trial, harness.core.beside): its
    evaluation run RUNNING, its run without `harness.evaluations.after`. The same command ends
    that run KILLED and writes the trial's records again, equal to its saved results; and the
    records written are counted once in the sweep's work.

    First, log_evaluations: all as the sweep left it: every trial's after records; the chosen
    trial, scored on the held-out part once chosen (sweep.heldout_scoring: chosen), gets those
    records in the same evaluation run, which then holds every set its results hold. (Their
    own test ran the same sweep again.)"""
    import optuna

    from harness.config import recipe
    from harness.core import context
    from harness.study import sweep
    from harness.tracking import records
    from harness.tracking.reader import EVALUATION_OF_TAG, KIND_TAG
    from harness.tracking.tracker import Tracker
    r = recipe.build(recipe_dict, "t.yaml", {"tracking.log_evaluations": "all"})
    with context.command():  # counted from zero, as a command's are
        parent = sweep.run_sweep(r).parent_run_id
    metrics = client.get_run(parent).data.metrics
    study = optuna.load_study(study_name="tiny", storage=recipe_dict["sweep"]["storage"])
    exp = client.get_run(parent).info.experiment_id
    evaluation_runs = [x.info.run_id for x in client.search_runs([exp])
                       if x.data.tags.get(KIND_TAG) in ("before", "after")]
    assert len(evaluation_runs) == 1 + len(study.trials)
    # the thread's counts folded into the sweep's: every trace the store holds, counted once
    assert metrics["work/records"] == sum(records.count(client, e)[0] for e in evaluation_runs)
    for t in study.trials:
        run_id = t.user_attrs["mlflow_run_id"]
        saved = Tracker(r).load_json(run_id, "eval/results.json")
        want = {k: v for name in saved["after"] for k, v in _expected(saved["after"], name).items()}
        assert ("math_heldout" in saved["after"]) == (t.number == study.best_trial.number)
        evaluation_run = client.get_run(run_id).data.tags["harness.evaluations.after"]
        _same(_scores(evaluation_run), want)
        assert client.get_run(evaluation_run).info.status == "FINISHED"
    trial = study.trials[0].user_attrs["mlflow_run_id"]
    stale = client.create_run(exp, run_name="trial-0/after", tags={
        KIND_TAG: "after", EVALUATION_OF_TAG: trial, "mlflow.parentRunId": trial}).info.run_id
    client.delete_tag(trial, "harness.evaluations.after")
    sweep.run_sweep(r)  # the study is complete: nothing to train, the records to write again
    assert client.get_run(stale).info.status == "KILLED"
    again = client.get_run(trial).data.tags["harness.evaluations.after"]
    assert again != stale and client.get_run(again).info.status == "FINISHED"
    saved = Tracker(r).load_json(trial, "eval/results.json")
    _same(_scores(again), {k: v for name in saved["after"]
                           for k, v in _expected(saved["after"], name).items()})
    assert not [x for x in client.search_runs([exp]) if x.info.status == "RUNNING"]


def test_harness_eval_records_each_side(recipe_dict, tiny_model_dir, client):
    """`harness eval MODEL --before BASE`: the eval run's two sides as evaluation runs."""
    from harness.eval import scoring
    from harness.config import recipe
    from harness.commands import evaluate
    from harness.tracking.tracker import Tracker
    r = recipe.build(recipe_dict, "t.yaml")
    out = evaluate.run_eval(r, tiny_model_dir, tiny_model_dir, Tracker(r))
    tags = client.get_run(out["run_id"]).data.tags
    for side in ("before", "after"):
        saved = scoring.results_to_json(out["results"][side])
        _same(_scores(tags[f"harness.evaluations.{side}"]), _expected(saved))


@pytest.mark.slow
def test_the_plain_path_draws_trace_ids_apart_from_the_seeded_random(tmp_path):
    """genai.evaluate's trace ids come from OpenTelemetry's generator, which draws from Python's
    global `random`: two runs seeded alike (recipes set `seed: 42`) made the same ids, and the
    second run's traces collided with the first's in another experiment (issue 48). The writer
    draws them apart, and leaves the seeded stream where it was."""
    import random

    import mlflow

    from harness.tracking import records
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    rows = [{"inputs": {"prompt": f"{i} + 1?"}, "outputs": str(i + 1),
             "expectations": {"reference": str(i + 1)}} for i in range(3)]
    ids = []
    try:
        for name in ("first", "second"):
            mlflow.set_experiment(name)
            with mlflow.start_run() as run:
                random.seed(42)
                state = random.getstate()
                records.write_with_genai_evaluate(
                    mlflow, rows, {"exact": lambda o, e: float(o == e["reference"])}, None,
                    sqlite=True)
                assert random.getstate() == state  # the seeded stream is untouched
            assert records.count(mlflow.MlflowClient(), run.info.run_id) == (3, 3)
            ids += [t.info.trace_id for t in mlflow.search_traces(
                run_id=run.info.run_id, return_type="list")]
    finally:
        mlflow.set_tracking_uri(None)
    assert len(set(ids)) == 6
