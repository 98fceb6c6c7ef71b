"""What reaches MLflow: secrets masked everywhere, long values flattened and truncated."""
from pathlib import Path

import pytest

from harness.commands import cli
from harness.config import recipe
from harness.tracking.reader import MAX_PARAM
from harness.tracking.tracker import Tracker

SECRET, TOKEN = "s3cr3t-pass", "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2"


@pytest.mark.slow
def test_secrets_never_reach_params_tags_files_reports_or_output(recipe_dict, write_recipe,
                                                                 capsys):
    import mlflow
    d = dict(recipe_dict, sweep=dict(recipe_dict["sweep"],
                                     storage=f"postgresql://bob:{SECRET}@127.0.0.1:1/optuna"),
             trainer=dict(recipe_dict["trainer"], hub_token=TOKEN))
    assert cli.main(["train", write_recipe(d)]) == 0
    out = capsys.readouterr()
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    (run,) = [r for r in runs if r.data.tags["harness.kind"] == "train"]  # and its `before`
    seen = [out.out, out.err]
    for each in runs:
        seen += [*each.data.params.values(), *each.data.tags.values()]
        if client.list_artifacts(each.info.run_id):  # evaluation runs have none
            local = Path(client.download_artifacts(each.info.run_id, ""))
            seen += [p.read_text(errors="ignore") for p in local.rglob("*") if p.is_file()]
    seen += [p.read_text() for p in Path(d["reports_dir"]).rglob("*.md")]
    assert not [s for s in seen if SECRET in s or TOKEN in s]
    assert any("bob:***@127.0.0.1" in s for s in seen)  # masked, not dropped
    assert run.data.params["recipe.model.trust_remote_code"] == "False"  # recorded
    mlflow.set_tracking_uri(None)


def test_long_values_and_many_keys_fit_mlflow_limits(recipe_dict):
    import mlflow
    r = recipe.build(recipe_dict, "t.yaml")
    tracker = Tracker(r)
    params = {"recipe": {"a": {"b": "x" * (MAX_PARAM + 500)}},
              "many": {f"k{i}": i for i in range(250)}}
    with tracker.run("long") as run_id:
        tracker.log_params(params)
        tracker.log_dict(params, "recipe_full.json")
    got = tracker.client.get_run(run_id).data.params
    assert len(got["recipe.a.b"]) == MAX_PARAM and got["recipe.a.b"].endswith("...")
    assert sum(k.startswith("many.") for k in got) == 250
    full = Path(tracker.client.download_artifacts(run_id, "recipe_full.json")).read_text()
    assert "x" * (MAX_PARAM + 500) in full  # the whole value kept as an artifact
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_logging_the_same_new_dataset_at_once_both_succeed(recipe_dict, pg_database):
    """MLflow's SQL store creates a dataset row unless it exists, without a lock: two sweep
    workers logging one golden set at once made one of them die with `UniqueViolation ...
    dataset_pk`. Eight threads, each its own run, log the same new datasets together, round
    after round, on a real PostgreSQL store."""
    import threading
    from types import SimpleNamespace

    import datasets
    import mlflow
    d = dict(recipe_dict, tracking={"uri": pg_database()})
    tracker = Tracker(recipe.build(d, "t.yaml"))
    train = datasets.Dataset.from_list([{"text": "a"}])
    errors, n_threads = [], 8
    for round_ in range(6):
        # a new golden set each round: every thread races to create it
        goldens = [SimpleNamespace(name=f"gs{round_}", path=f"gs{round_}.yaml",
                                   prompts=[f"q{round_}"], references=[f"a{round_}"])]
        barrier = threading.Barrier(n_threads)

        def log(i):
            try:
                with tracker.run(f"r{round_}-{i}"):
                    barrier.wait()
                    tracker.log_inputs(train, "rows.jsonl", goldens)
            except Exception as e:  # noqa: BLE001 - the test reports any failure
                errors.append(repr(e)[:300])
        threads = [threading.Thread(target=log, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    runs = tracker.client.search_runs([tracker.client.get_experiment_by_name("tiny")
                                       .experiment_id], max_results=100)
    assert len(runs) == 6 * n_threads and {r.info.status for r in runs} == {"FINISHED"}
    assert all({i.dataset.name for i in r.inputs.dataset_inputs} == {
        "train", f"gs{r.info.run_name.split('-')[0][1:]}"} for r in runs)
    mlflow.set_tracking_uri(None)


def test_rows_logged_into_every_trial_are_described_once(recipe_dict, monkeypatch):
    """A sweep logs the same training rows and golden sets into each trial: MLflow infers their
    schema and digest once (seconds for thousands of rows), and every run carries the inputs."""
    from types import SimpleNamespace

    import datasets
    import mlflow
    tracker = Tracker(recipe.build(recipe_dict, "t.yaml"))
    built = []
    real = mlflow.data.from_huggingface
    monkeypatch.setattr(mlflow.data, "from_huggingface",
                        lambda *a, **k: built.append(1) or real(*a, **k))
    train = datasets.Dataset.from_list([{"text": f"row {i}"} for i in range(50)])
    goldens = [SimpleNamespace(name="gs", path="gs.yaml", prompts=["q"], references=["a"])]
    ids = []
    for i in range(3):
        with tracker.run(f"trial-{i}") as run_id:
            tracker.log_inputs(train, "rows.jsonl", goldens)
            ids.append(run_id)
    other = datasets.Dataset.from_list([{"text": "another"}])
    with tracker.run("other"):
        tracker.log_inputs(other, "other.jsonl", goldens)
    assert len(built) == 2  # once for `train`, once for `other`
    digests = [{i.dataset.name: i.dataset.digest for i in
                tracker.client.get_run(r).inputs.dataset_inputs} for r in ids]
    assert digests[0].keys() == {"train", "gs"} and digests == [digests[0]] * 3
    mlflow.set_tracking_uri(None)
