"""The manifest on every run, `harness rerun` and `harness export`, on a real MLflow store."""
import json
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import tiny_recipe
from harness.eval import goldensets
from harness.commands import logged_runs
from harness.pipeline import manifest, run
from harness.config import recipe
from harness.core.errors import HarnessError
from harness.tracking.tracker import Tracker


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, empty_mlflow_store):
    """One `harness train` run of the tiny recipe: (recipe, outcome, MLflow client). Trained
    once for the module's tests (once per xdist process that runs any): each reads the run
    back or exports it into its own tmp_path, and none changes what another reads (a rerun
    adds a run of its own; a registered model has a name of its own)."""
    import mlflow
    import yaml
    folder = tmp_path_factory.mktemp("trained")
    d = tiny_recipe(folder, tiny_model_dir, empty_mlflow_store)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(d))
    r = recipe.build(d, str(folder / "recipe.yaml"))
    outcome, _ = run.train_and_report(r, Tracker(r))
    yield r, outcome, mlflow.MlflowClient(r.tracking.uri)
    mlflow.set_tracking_uri(None)


def _artifact_json(client, run_id: str, path: str):
    return json.loads(Path(client.download_artifacts(run_id, path)).read_text())


@pytest.mark.slow
def test_every_run_carries_a_manifest_and_dataset_inputs(trained):
    r, outcome, client = trained
    m = _artifact_json(client, outcome.run_id, manifest.FILE)
    assert m["recipe"] == r.to_dict() and m["recipe_hash"] == r.fingerprint()
    assert m["packages"]["trl"] == version("trl") and m["packages"]["torch"] == version("torch")
    assert m["device"]["device/device"] == "cpu" and m["seeds"]["recipe"] == r.seed
    assert m["data"]["rows_train"] == 8 and m["data"]["fingerprint"]
    gs = m["goldensets"]["math"]
    assert gs["examples"] == 4 and len(gs["examples_sha256"]) == 64
    assert gs["examples_sha256"] == manifest.examples_sha256(goldensets.load(gs["manifest"]))
    inputs = client.get_run(outcome.run_id).inputs.dataset_inputs
    seen = {(i.dataset.name, i.tags[0].value) for i in inputs}
    assert seen == {("train", "training"), ("math", "evaluation")}


def test_git_state_names_the_commit_and_whether_tracked_files_changed(tmp_path):
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t",
                               "-c", "user.email=t@t", *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "recipe.yaml").write_text("name: a\n")
    git("add", "recipe.yaml")
    git("commit", "-q", "-m", "a recipe")
    head = git("rev-parse", "HEAD")
    (tmp_path / "notes.txt").write_text("untracked\n")  # not part of what ran
    assert manifest.git_state(str(tmp_path)) == {"commit": head, "dirty": False}
    (tmp_path / "recipe.yaml").write_text("name: b\n")
    assert manifest.git_state(str(tmp_path)) == {"commit": head, "dirty": True}
    assert manifest.git_state("/") == {}  # not a repository: nothing claimed


@pytest.mark.slow
def test_rerun_reproduces_the_logged_metrics_on_cpu(trained):
    r, outcome, client = trained
    out = logged_runs.rerun(r.tracking.uri, outcome.run_id)
    assert out["run_id"] != outcome.run_id
    assert client.get_run(out["run_id"]).data.tags["harness.rerun_of"] == outcome.run_id
    assert list(out["after"]) == outcome.comparison.keys()
    for key, (was, now) in out["after"].items():
        assert now == pytest.approx(was, abs=1e-6), key  # fixed seed, fp32, CPU


@pytest.fixture
def trained_lively(recipe_dict, write_recipe, lively_model_dir):
    """`trained` on the lively model at a high learning rate: its answers differ from example to
    example and the adapter moves them, so a merge that lost the adapter would show."""
    import mlflow
    d = dict(recipe_dict, model={"name": lively_model_dir},
             trainer={**recipe_dict["trainer"], "learning_rate": 5e-2})
    r = recipe.build(d, write_recipe(d), {"eval.max_new_tokens": 12})
    outcome, _ = run.train_and_report(r, Tracker(r))
    yield r, outcome, mlflow.MlflowClient(r.tracking.uri)
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_export_merged_loads_with_from_pretrained_and_predicts_as_the_run(trained_lively,
                                                                          tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.eval import scoring
    r, outcome, client = trained_lively
    out = tmp_path / "exported"
    res = logged_runs.export(r.tracking.uri, outcome.run_id, str(out), merge=True,
                             register="tiny-math")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and not (out / "adapter_config.json").exists()
    gs = goldensets.load(r.eval.goldensets[0])
    mine = scoring.evaluate_set(model, tok, gs, r.eval.batch_size, r.eval.max_new_tokens)
    table = _artifact_json(client, outcome.run_id, "eval/math_examples.json")
    logged = [row[table["columns"].index("after/prediction")] for row in table["data"]]
    assert [e["prediction"] for e in mine.examples] == logged
    before = [row[table["columns"].index("before/prediction")] for row in table["data"]]
    assert len(set(logged)) > 1 and logged != before  # answers differ, and training moved them
    mv = client.get_model_version("tiny-math", res["version"])
    assert mv.run_id == outcome.run_id
    assert float(mv.tags["after/math/numeric_accuracy"]) == pytest.approx(
        outcome.comparison["math/numeric_accuracy"].after, abs=1e-6)
    with pytest.raises(HarnessError, match="OUT_DIR: .* not empty"):
        logged_runs.export(r.tracking.uri, outcome.run_id, str(out))


@pytest.mark.slow
def test_export_adapter_alone(trained, tmp_path):
    from peft import AutoPeftModelForCausalLM
    r, outcome, _ = trained
    logged_runs.export(r.tracking.uri, outcome.run_id, str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    # the run's trained adapter (LoRA's B starts at zero), on the run's base model
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().sum() > 0 for p in trained)
    assert model.peft_config["default"].base_model_name_or_path == r.model.name


@pytest.mark.slow
def test_export_and_register_from_the_runs_logged_model(trained, tmp_path):
    r, outcome, client = trained
    model_id = client.get_run(outcome.run_id).data.tags["harness.model_id"]
    res = logged_runs.export(r.tracking.uri, model_id, str(tmp_path / "a"), register="tiny-lora")
    assert res["run_id"] == outcome.run_id and (tmp_path / "a" / "adapter_config.json").is_file()
    mv = client.get_model_version("tiny-lora", res["version"])
    assert mv.source == f"models:/{model_id}" and mv.run_id == outcome.run_id
    assert mv.tags["harness.run_id"] == outcome.run_id
    with pytest.raises(HarnessError, match="RUN_ID: no MLflow LoggedModel 'm-nope'"):
        logged_runs.export(r.tracking.uri, "m-nope", str(tmp_path / "b"))
    # init_from (and GRPO's reward_model) may name the LoggedModel itself
    got = Tracker(r).fetch_adapter(model_id, str(tmp_path / "c"))
    assert (Path(got) / "adapter_config.json").is_file()
    with pytest.raises(HarnessError, match="model.init_from: no MLflow LoggedModel 'm-nope'"):
        Tracker(r).fetch_adapter("m-nope", str(tmp_path / "d"))


@pytest.mark.slow
def test_log_models_none_keeps_the_adapter_local(recipe_dict, write_recipe, tmp_path):
    import mlflow
    d = dict(recipe_dict, tracking=dict(recipe_dict["tracking"], log_models="none"))
    r = recipe.build(d, write_recipe(d))
    outcome, _ = run.train_and_report(r, Tracker(r))
    client = mlflow.MlflowClient(r.tracking.uri)
    exp = client.get_experiment_by_name(r.name)
    assert not client.search_logged_models([exp.experiment_id])
    assert "harness.model_id" not in client.get_run(outcome.run_id).data.tags
    # export (and init_from) still find the adapter, in the run's output folder
    logged_runs.export(r.tracking.uri, outcome.run_id, str(tmp_path / "a"))
    assert (tmp_path / "a" / "adapter_config.json").is_file()
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_unknown_run_is_one_line(trained):
    r, _, _ = trained
    with pytest.raises(HarnessError, match="RUN_ID: no MLflow run 'nope'"):
        logged_runs.rerun(r.tracking.uri, "nope")
