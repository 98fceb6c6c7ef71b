"""A real sweep on the tiny model: real Optuna study, real MLflow store, read back."""
import json

import pytest

from harness import recipe, sweep


@pytest.fixture
def client(recipe_dict):
    import mlflow
    mlflow.set_tracking_uri(recipe_dict["tracking"]["uri"])
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def test_sweep_logs_everything_and_resumes(recipe_dict, tmp_path, client):
    import optuna
    r = recipe.build(recipe_dict, "tiny.yaml")
    out = sweep.run_sweep(r)
    assert out["best_trial"] in (0, 1)

    study = optuna.load_study(study_name="tiny", storage=recipe_dict["sweep"]["storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("harness.kind") == "sweep"]
    trials = [x for x in runs if x.data.tags.get("harness.kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    assert all(x.info.status == "FINISHED" for x in runs)

    t0 = next(t for t in trials if t.data.tags["harness.trial"] == "0")
    m = t0.data.metrics
    for key in ("before/math/numeric_accuracy", "after/math/numeric_accuracy",
                "delta/math/perplexity", "after/math/answer_format"):
        assert key in m
    assert m["delta/math/perplexity"] == pytest.approx(
        m["after/math/perplexity"] - m["before/math/perplexity"])
    # params: the flattened recipe with the trial's values, and the device plan
    p = t0.data.params
    assert float(p["recipe.trainer.learning_rate"]) == pytest.approx(
        study.trials[0].params["trainer.learning_rate"])
    assert p["recipe.adapter.r"] == str(study.trials[0].params["adapter.r"])
    assert p["device/dtype"] == "float32"
    # per-step training metrics from the TRL trainer
    assert len(client.get_metric_history(t0.info.run_id, "loss")) == 2
    arts = {a.path for a in client.list_artifacts(t0.info.run_id)}
    assert {"recipe.yaml", "eval"} <= arts
    table = json.loads(open(client.download_artifacts(
        t0.info.run_id, "eval/math_examples.json", str(tmp_path))).read())
    assert len(table["data"]) == 4 and "after/prediction" in table["columns"]

    parent_arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_adapter", "report", "eval"} <= parent_arts
    assert any(a.path.endswith("adapter_config.json")
               for a in client.list_artifacts(parent.info.run_id, "best_adapter"))
    report = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert "## All trials" in report and "## Before / after (best trial)" in report
    assert "math/numeric_accuracy" in report and "## Examples (best trial)" in report

    # the same command resumes the study: one more trial, same parent, base not re-scored
    r3 = recipe.build(recipe_dict, "tiny.yaml", {})
    sweep.run_sweep(r3, n_trials=3)
    study = optuna.load_study(study_name="tiny", storage=recipe_dict["sweep"]["storage"])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    runs = client.search_runs([exp.experiment_id])
    assert sum(x.data.tags.get("harness.kind") == "sweep" for x in runs) == 1
    assert sum(x.data.tags.get("harness.kind") == "trial" for x in runs) == 3
    assert len(client.get_metric_history(parent.info.run_id,
                                         "before/math/numeric_accuracy")) == 1  # scored once
    assert all(x.info.status == "FINISHED" for x in runs)
    # a finished study: running again adds nothing
    sweep.run_sweep(r3, n_trials=3)
    assert len(optuna.load_study(study_name="tiny",
                                 storage=recipe_dict["sweep"]["storage"]).trials) == 3


def test_failed_trial_ends_its_run_failed(recipe_dict, client, monkeypatch):
    from harness import run
    r = recipe.build(recipe_dict, "tiny.yaml")

    def boom(*a, **k):
        raise RuntimeError("loss exploded")
    monkeypatch.setattr(run.train, "train", boom)
    with pytest.raises(RuntimeError):
        sweep.run_sweep(r)
    exp = client.get_experiment_by_name("tiny")
    statuses = {x.data.tags.get("harness.kind"): x.info.status
                for x in client.search_runs([exp.experiment_id])}
    assert statuses == {"sweep": "FAILED", "trial": "FAILED"}
