"""lm-evaluation-harness tasks as evaluation entries (harness.eval.lm_eval_tasks): real lm-eval on
real
models (a tiny one built from a config, and the embedded SmolLM2 for the equality check),
through the CLI and real MLflow stores; every task on local files (no network here)."""
import json
from pathlib import Path

import pytest
import yaml

from harness.eval import lm_eval_tasks
from harness.commands import cli
from harness.config import recipe
from harness.tracking.tracker import Tracker

SHIPPED = Path(lm_eval_tasks.BUILTIN) / "harness_math.yaml"


def _cli(capsys, *argv, code=0) -> str:
    got = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert got == code, out.err[-3000:]
    assert "Traceback" not in out.err
    return out.out + out.err


def _results(uri: str, run_id: str) -> dict:
    import mlflow
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval/results.json",
                                               tracking_uri=uri)
    return json.loads(Path(path).read_text())


@pytest.mark.slow
def test_the_shipped_math_task_scores_as_numeric_accuracy_does(tmp_path, capsys):
    """builtin:harness_math is the math golden set as an lm-eval task: on the real embedded
    model (greedy, chat template, 64 new tokens) lm-eval's exact_match on the last number
    equals the harness's numeric_accuracy example by example (the references have no '####'
    left for the two definitions to differ on)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    said = _cli(capsys, "eval", "embedded:smollm2-135m-instruct", "--goldenset",
                "goldensets/math.yaml", "--benchmark", "builtin:harness_math", "--limit", 8,
                "--set", "eval.max_examples=8", "--set", "eval.forgetting_guard=null",
                "--set", f"tracking.uri={uri}", "--set", f"reports_dir={tmp_path}",
                "--set", "tracking.log_evaluations=none")
    run_id = said.split("run ")[-1].split(";")[0]
    after = _results(uri, run_id)["after"]
    ours, theirs = after["math"]["examples"], after["harness_math"]["examples"]
    assert [e["prompt"] for e in ours] == [e["prompt"] for e in theirs]
    assert [e["numeric_accuracy"] for e in ours] == [e["exact_match"] for e in theirs]
    assert [e["prediction"] for e in ours] == [e["prediction"] for e in theirs]
    assert after["math"]["metrics"]["numeric_accuracy"] == \
        after["harness_math"]["metrics"]["exact_match"] > 0


@pytest.mark.slow
def test_a_train_run_pairs_a_benchmark_before_and_after(recipe_dict, write_recipe, client,
                                                        tmp_path, capsys):
    recipe_dict["eval"]["benchmarks"] = [{"task": "builtin:harness_math", "limit": 6}]
    recipe_dict["tracking"]["log_evaluations"] = "all"
    _cli(capsys, "train", write_recipe(recipe_dict), "--set", "trainer.learning_rate=5e-3")
    exp = client.get_experiment_by_name("tiny")
    run = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'train'")[0]
    m = run.data.metrics
    for side in ("before", "after", "delta", "p_value", "p_holm"):
        assert f"{side}/harness_math/exact_match" in m
    assert m["time/benchmarks"] > 0 and m["work/benchmark_documents"] == 12  # before + after
    saved = _results(recipe_dict["tracking"]["uri"], run.info.run_id)
    # Holm across the golden set's metrics and the benchmark's together
    assert [m["p_holm"] is not None for m in saved["comparison"]["metrics"]] == [True] * 4
    ex = saved["after"]["harness_math"]
    assert ex["columns"]["doc_ids"] == list(range(6)) and len(ex["examples"]) == 6
    text = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert "| harness_math/exact_match |" in text and "### harness_math" in text


@pytest.mark.slow
def test_a_sweep_scores_benchmarks_for_the_start_and_the_chosen_trial_only(
        recipe_dict, write_recipe, client, capsys):
    recipe_dict["eval"]["benchmarks"] = [{"task": "builtin:harness_math", "limit": 4}]
    _cli(capsys, "sweep", write_recipe(recipe_dict), "--n-trials", 2)
    exp = client.get_experiment_by_name("tiny")
    sweep = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'sweep'")[0]
    best = sweep.data.tags["harness.best_run_id"]
    trials = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'")
    assert len(trials) == 2
    for t in trials:
        has = "after/harness_math/exact_match" in t.data.metrics
        assert has == (t.info.run_id == best), t.info.run_name
    # harness compare takes the sweep's run for its best trial, whose logged results it reuses
    from harness.commands import compare
    from harness.pipeline import prepared
    tracker = Tracker(recipe.build(recipe_dict, "t.yaml"))
    assert compare.source_run(prepared.model_fields(sweep.info.run_id, tracker), tracker) == best
    assert compare.source_run(prepared.model_fields(recipe_dict["model"]["name"], tracker),
                              tracker) is None


@pytest.mark.slow
def test_a_task_of_your_own_on_local_files(recipe_dict, tmp_path, capsys):
    """include_path: a folder of task YAMLs; this one reads a JSONL beside the test."""
    rows = [{"question": f"What is {a} + {b}?", "answer": f"#### {a + b}"}
            for a, b in [(1, 2), (3, 4), (5, 6)]]
    (tmp_path / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = yaml.safe_load(SHIPPED.read_text())
    cfg.update(task="my_sums", dataset_kwargs={"data_files": {"test": str(tmp_path /
                                                                          "sums.jsonl")}})
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_sums.yaml").write_text(yaml.safe_dump(cfg))
    r = recipe.build({"name": "own", "tracking": recipe_dict["tracking"],
                      "reports_dir": recipe_dict["reports_dir"],
                      "eval": {"goldensets": [], "forgetting_guard": None, "benchmarks": [
                          {"task": "my_sums", "include_path": str(tmp_path / "tasks")}]}},
                     "own.yaml")
    from harness.commands import evaluate
    out = evaluate.run_eval(r, recipe_dict["model"]["name"], None, Tracker(r))
    res = out["results"]["after"]["my_sums"]
    assert [e["reference"] for e in res.examples] == ["3", "7", "11"]
    assert res.decoding["lm_eval_task"] == "my_sums" and res.modules == {
        "exact_match": "sample_rate"}


@pytest.mark.parametrize("task, needle", [
    ("gsm8kk", "eval.benchmarks.0.task: unknown lm-eval task 'gsm8kk'; did you mean gsm8k?"),
    ("builtin:harness_maths", "no shipped lm-eval task 'harness_maths'; did you mean "
                              "harness_math?"),
])
@pytest.mark.slow  # the first import of lm-eval's task registry: ~13 s on the 2-core CPU
def test_validate_knows_lm_eval_task_names(recipe_dict, write_recipe, capsys, task, needle):
    recipe_dict["eval"]["benchmarks"] = [{"task": task}]
    said = _cli(capsys, "validate", write_recipe(recipe_dict), code=2)
    assert needle in said and len(said.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_hub_task_without_the_hub_fails_in_one_line(tiny_model_dir, tmp_path):
    """As a user types it, in a process of its own (the HF libraries read their settings at
    import), with the Hub unreachable (an endpoint nothing listens on) and nothing cached: no
    minute of retries, one line, exit 2."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_DATASETS_CACHE":
           str(tmp_path / "datasets"), "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.pop("HF_HUB_OFFLINE", None)
    p = subprocess.run([sys.executable, "-m", "harness", "eval", tiny_model_dir, "--benchmark",
                        "arc_easy", "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "Retrying" not in p.stderr, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: harness eval: eval.benchmarks.0.task: lm-eval task "
                           "'arc_easy' could not load its data"), line
    assert "the Hub is unreachable" in line and "include_path" in line, line
