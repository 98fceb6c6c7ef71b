"""GRPO's rewards (harness.train.rewards) and a real GRPO run on the tiny model, end to end."""
import pytest

from harness.eval import scoring, metrics
from harness.pipeline import prepared, run
from harness.config import recipe
from harness.train import rewards
from harness.core.errors import HarnessError
from harness.tracking.tracker import Tracker
from tests.conftest import jsonl


def length_reward(prompts, completions, **_):
    """A user's reward, named by its import path in the recipe (rewards: name function)."""
    return [-len(evaluation_text) / 100 for evaluation_text in rewards._texts(completions)]


def _grpo(recipe_dict, **over) -> dict:
    d = dict(recipe_dict, method="grpo",
             rewards=[{"name": "math_answer"}, {"name": "answer_format", "weight": 0.5}],
             trainer={"max_steps": 1, "per_device_train_batch_size": 2, "num_generations": 2,
                      "max_completion_length": 8})
    d.update(over)
    return d


def test_verifiable_rewards_are_the_golden_set_metrics():
    spec = recipe.RewardSpec
    answer, fmt = rewards.build([spec(name="math_answer"), spec(name="answer_format")])[0]
    completions = [[{"role": "assistant", "content": "4 + 5 = 9\n#### 9"}],
                   [{"role": "assistant", "content": "It is 10."}], "#### 7"]
    refs = ["Add them.\n#### 9", "#### 9", "#### 7"]
    got = answer(prompts=[None] * 3, completions=completions, answer=refs)
    texts = rewards._texts(completions)
    assert got == metrics.compute("numeric_accuracy", {"predictions": texts,
                                                        "references": refs})["scores"]
    assert got == [1.0, 0.0, 1.0]
    assert fmt(prompts=[None] * 3, completions=completions) == [1.0, 0.0, 1.0]
    with pytest.raises(HarnessError, match="math_answer needs a reference answer"):
        answer(prompts=[None], completions=["#### 1"])


def test_unknown_reward_and_bad_function_are_one_line(recipe_dict):
    r = recipe.build(_grpo(recipe_dict, rewards=[{"name": "math_answr"}]), "g.yaml")
    with pytest.raises(HarnessError, match=r"g.yaml: rewards.0.name: unknown reward "
                                           r"'math_answr'; did you mean math_answer\?"):
        prepared.check(r)
    with pytest.raises(HarnessError, match="'nope.mod:f' cannot be imported"):
        rewards.build([recipe.RewardSpec(name="function", path="nope.mod:f")])
    with pytest.raises(HarnessError, match="method grpo needs rewards"):
        recipe.build(_grpo(recipe_dict, rewards=[]), "g.yaml")
    with pytest.raises(HarnessError, match="rewards are for method grpo, not sft"):
        recipe.build(dict(recipe_dict, rewards=[{"name": "math_answer"}]), "s.yaml")


def test_a_sweep_can_search_a_rewards_weight(recipe_dict):
    r = recipe.with_values(recipe.build(_grpo(recipe_dict), "g.yaml"), {"rewards.1.weight": 0.2})
    assert [x.weight for x in r.rewards] == [1.0, 0.2]
    with pytest.raises(HarnessError, match="rewards has 2 items, no '2'"):
        recipe.with_values(r, {"rewards.2.weight": 1.0})


def test_prompt_less_data_is_refused_for_grpo(recipe_dict, tmp_path):
    rows = jsonl(tmp_path / "text.jsonl", [{"text": "just text"}] * 4)
    r = recipe.build(_grpo(recipe_dict, data={"train": rows}), "g.yaml")
    with pytest.raises(HarnessError, match="a prompt trainer cannot train on text rows"):
        prepared.prepare(r)


@pytest.mark.slow
def test_grpo_run_trains_on_prompts_with_weighted_rewards_and_scores_before_after(
        recipe_dict, tmp_path):
    import mlflow
    d = _grpo(recipe_dict)
    d["rewards"].append({"name": "function", "path": "tests.train.test_rewards:length_reward",
                         "weight": 0.1})
    r = recipe.build(d, "g.yaml")
    tracker = Tracker(r)
    prep = prepared.prepare(r, tracker)
    row = prep.train_ds[0]
    assert row["prompt"][0]["role"] == "user" and row["answer"].rstrip().split()[-1].isdigit()
    prepared.evaluate_start(prep)
    out = run.run_one(prep, r, tracker, "grpo", nested=False)
    assert out.comparison.keys() == list(scoring.flat_metrics(prep.before))
    client = mlflow.MlflowClient(r.tracking.uri)
    m = client.get_run(out.run_id).data.metrics
    # TRL's own logging: each reward's mean, under its name
    for name in ("math_answer", "answer_format", "length_reward"):
        assert f"rewards/{name}/mean" in m, sorted(m)
    assert client.get_run(out.run_id).data.params["recipe.method"] == "grpo"
    # the completions TRL sampled, with each reward and the advantage, as an MLflow table
    import json
    table = json.loads(open(client.download_artifacts(out.run_id, "completions.json")).read())
    assert {"step", "prompt", "completion", "math_answer", "answer_format", "length_reward",
            "advantage"} <= set(table["columns"])
    assert len(table["data"]) == 2 and "user: " in table["data"][0][table["columns"].index(
        "prompt")]
    # `harness rerun` trains the logged GRPO recipe again, rewards and all, from its manifest
    from harness.commands import logged_runs
    again = logged_runs.rerun(r.tracking.uri, out.run_id)
    assert list(again["after"]) == out.comparison.keys()
    assert client.get_run(again["run_id"]).data.tags["harness.rerun_of"] == out.run_id
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_rlhf_chain_reward_run_then_grpo_scored_by_its_model(recipe_dict, pref_goldenset):
    import mlflow
    d = dict(recipe_dict, method="reward", name="tiny-rm",
             data={"train": "builtin:math_preferences", "builtin_rows": 8},
             trainer={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 128})
    d["eval"] = dict(d["eval"], goldensets=[pref_goldenset])
    d["sweep"] = dict(d["sweep"], objective="prefs/pairwise_accuracy")
    rm = recipe.build(d, "rm.yaml")
    judge, _ = run.train_and_report(rm, Tracker(rm))
    g = recipe.build(_grpo(recipe_dict, rewards=[
        {"name": "reward_model", "path": judge.run_id}, {"name": "answer_format"}]), "g.yaml")
    tracker = Tracker(g)
    prep = prepared.prepare(g, tracker)
    base, adapter, _ = prep.reward_models[0]
    assert adapter and (__import__("pathlib").Path(adapter) / "adapter_config.json").is_file()
    prepared.evaluate_start(prep)
    out = run.run_one(prep, g, tracker, "rlhf", nested=False)
    logged = mlflow.MlflowClient(g.tracking.uri).get_run(out.run_id)
    assert logged.data.tags["harness.reward_model"] == judge.run_id  # the chain, as a tag
    assert any(k.startswith("rewards/") and "answer_format" not in k
               for k in logged.data.metrics), sorted(logged.data.metrics)
    # a run that trained no reward model is refused, naming the key
    sft, _ = run.train_and_report(recipe.build(recipe_dict, "s.yaml"),
                                  Tracker(recipe.build(recipe_dict, "s.yaml")))
    bad = recipe.build(_grpo(recipe_dict, rewards=[{"name": "reward_model", "path": sft.run_id}]),
                       "g.yaml")
    with pytest.raises(HarnessError, match=r"g.yaml: rewards.0.path: MLflow run '\w+' is a sft "
                                           "run, not a reward run"):
        prepared.prepare(bad, Tracker(bad))
    mlflow.set_tracking_uri(None)
