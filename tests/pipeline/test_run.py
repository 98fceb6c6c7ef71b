"""The one-run pipeline across trainers, and SFT -> DPO chaining through a real MLflow store."""
import pytest

from harness.pipeline import prepared, run
from harness.config import recipe
from harness.tracking.tracker import Tracker


def _train(recipe_dict, **over):
    r = recipe.build(recipe_dict, "t.yaml", over)
    tracker = Tracker(r)
    prep = prepared.prepare(r, tracker)
    prepared.evaluate_start(prep)
    return run.run_one(prep, r, tracker, r.name, nested=False), tracker, prep


def test_reward_run_scores_pairs_and_reference_answers(recipe_dict, pref_goldenset):
    d = dict(recipe_dict, method="reward",
             data={"train": "builtin:math_preferences", "builtin_rows": 8},
             trainer={"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 128})
    d["eval"] = dict(d["eval"], goldensets=[pref_goldenset] + d["eval"]["goldensets"])
    d["sweep"] = dict(d["sweep"], objective="prefs/pairwise_accuracy")
    out, tracker, prep = _train(d)
    assert out.comparison.keys() == ["prefs/pairwise_accuracy", "prefs/score_margin",
                                     "math/reference_reward"]
    for ex in out.after["prefs"].examples:
        assert ex["pairwise_accuracy"] == float(ex["chosen_score"] > ex["rejected_score"])
    # the run's metric is the mean of the per-example scores in the table it logged beside it
    import json

    import mlflow
    client = mlflow.MlflowClient()
    with open(client.download_artifacts(out.run_id, "eval/prefs_examples.json")) as f:
        table = json.load(f)
    scores = [row[table["columns"].index("after/pairwise_accuracy")] for row in table["data"]]
    acc = out.comparison["prefs/pairwise_accuracy"]
    logged = client.get_run(out.run_id).data.metrics
    assert logged["after/prefs/pairwise_accuracy"] == pytest.approx(sum(scores) / len(scores))
    assert acc.after == pytest.approx(sum(scores) / len(scores))
    assert acc.delta == pytest.approx(acc.after - acc.before)
    assert logged["before/prefs/pairwise_accuracy"] == pytest.approx(
        prep.before["prefs"].metrics["pairwise_accuracy"])
    # what the run saved reads back as the comparison it logged
    from harness.eval.results import read_results
    assert read_results(tracker, out.run_id).comparison == out.comparison


@pytest.mark.slow
def test_sft_then_dpo_chains_by_run_id(recipe_dict, pref_goldenset, tmp_path):
    import mlflow
    sft, tracker, sft_prep = _train(recipe_dict, **{"trainer.learning_rate": 5e-3})
    assert sft_prep.handover.rows.held is not None  # the rows a next trial's trainer would take
    client = mlflow.MlflowClient()
    # the adapter is the run's MLflow LoggedModel, its after/ metrics linked to it and its set
    model_id = client.get_run(sft.run_id).data.tags["harness.model_id"]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == sft.run_id and model.status == "READY"
    assert model.model_type == "peft-lora-adapter"
    assert {m.key: m.dataset_name for m in model.metrics}["after/math/numeric_accuracy"] == "math"
    assert [o.model_id for o in client.get_run(sft.run_id).outputs.model_outputs] == [model_id]
    assert not client.list_artifacts(sft.run_id, "adapter")  # not stored twice

    d = dict(recipe_dict, method="dpo", name="tiny-dpo",
             data={"train": "builtin:math_preferences", "builtin_rows": 8},
             trainer={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 128})
    d["model"] = dict(d["model"], init_from=sft.run_id)
    d["eval"] = dict(d["eval"], goldensets=d["eval"]["goldensets"] + [pref_goldenset])
    dpo, tracker, prep = _train(d)
    assert prep.init_adapter  # the SFT adapter, downloaded from MLflow and merged
    run_ = client.get_run(dpo.run_id)
    assert run_.data.tags["harness.init_from"] == sft.run_id
    m = run_.data.metrics
    # "before" is the SFT model: its scores equal the SFT run's "after"; the base is kept too
    sft_after = client.get_run(sft.run_id).data.metrics
    assert m["before/math/perplexity"] == pytest.approx(sft_after["after/math/perplexity"],
                                                        rel=1e-4)
    assert m["base/math/perplexity"] == pytest.approx(sft_after["before/math/perplexity"],
                                                      rel=1e-4)
    assert m["before/math/perplexity"] != pytest.approx(m["base/math/perplexity"], rel=1e-3)
    assert "after/prefs/pairwise_accuracy" in m


@pytest.mark.slow
@pytest.mark.parametrize("data", ["builtin:math_unpaired", "builtin:math_preferences"])
def test_sft_then_kto_on_unpaired_judgements_or_unpaired_pairs(recipe_dict, pref_goldenset, data):
    import mlflow
    sft, _, _ = _train(recipe_dict)
    d = dict(recipe_dict, method="kto", name="tiny-kto",
             data={"train": data, "builtin_rows": 8},
             trainer={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 128})
    d["model"] = dict(d["model"], init_from=sft.run_id)
    d["eval"] = dict(d["eval"], goldensets=d["eval"]["goldensets"] + [pref_goldenset])
    kto, _, prep = _train(d)
    assert prep.init_adapter
    if data == "builtin:math_unpaired":  # one judgement a problem: good ones and bad ones
        assert set(prep.train_ds["label"]) == {False, True}
        prompts = [str(p) for p in prep.train_ds["prompt"]]
        assert len(set(prompts)) == len(prompts)
    run_ = mlflow.MlflowClient().get_run(kto.run_id)
    assert run_.data.tags["harness.init_from"] == sft.run_id
    assert run_.data.params["recipe.method"] == "kto"
    m = run_.data.metrics
    assert "after/prefs/pairwise_accuracy" in m and "train_loss" in m
    # TRL's KTO logs the rewards of desirable and undesirable completions
    assert any(k.startswith("rewards/chosen") or k.startswith("rewards/rejected") for k in m), \
        sorted(m)


def test_a_golden_set_from_the_training_data_is_scored_before_and_after(recipe_dict, tmp_path):
    """`harness train` with eval.from_train on a file of question/answer rows: the held-out rows
    are scored before and after with the text-overlap metrics and the reference's perplexity, and
    the report says what each metric could detect, from the observed scores."""
    from conftest import jsonl
    from harness.eval import objective
    from harness.eval.results import read_results
    path = jsonl(tmp_path / "qa.jsonl", [{"question": f"What is {i} + {i}?",
                                          "answer": f"{i} + {i} = {2 * i}"} for i in range(24)])
    r = recipe.build(recipe_dict, "t.yaml", {"data": {"train": path},
                                             "eval.from_train": {"rows": 8, "max_new_tokens": 4},
                                             "sweep.objective": "qa/rougeL"})
    tracker = Tracker(r)
    out, report = run.train_and_report(r, tracker)
    keys = [k for k in out.comparison.keys() if k.startswith("qa/")]
    assert keys == [f"qa/{m}" for m in ("rougeL", "f1", "bleu", "chrf", "perplexity")]
    assert out.comparison["qa/perplexity"].n == 8
    assert out.comparison["qa/perplexity"].after != out.comparison["qa/perplexity"].before
    saved = read_results(tracker, out.run_id)
    assert [e["reference"] for e in saved.before["qa"].examples] == \
        [e["reference"] for e in out.after["qa"].examples]
    text = report.read_text()
    assert "## What these golden sets can detect" in text
    rows = {o.key: o for o in objective.observed(saved.before, out.after)}
    assert rows["qa/perplexity"].lift > 0  # the reference's perplexity moves in training
    for key in keys:
        lift = rows[key].lift
        assert f"| {key} | 8 | {'—' if lift is None else f'{lift:.3g}'} |" in text
    # the held-out rows are no training rows: 24 - 8
    assert tracker.read_run(out.run_id).params["data.rows_train"] == "16"
