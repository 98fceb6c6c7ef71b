"""sweep.repeat_best: the best trial's values trained again with more seeds, each a run of the
sweep; the held-out metric's spread and the lead's test on the sweep run and in the report."""
from __future__ import annotations

import math

import pytest

from harness.config import recipe
from harness.study import seeds, sweep


@pytest.mark.slow
def test_repeat_best_trains_the_best_values_with_more_seeds(recipe_dict, client):
    # one step a run: the checks are which runs were trained, with what, and their arithmetic
    d = dict(recipe_dict, seed=7, trainer=dict(recipe_dict["trainer"], max_steps=1))
    d["sweep"] = dict(d["sweep"], repeat_best=2)
    out = sweep.run_sweep(recipe.build(d, "r.yaml"))
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    repeats = [r for r in runs if r.data.tags.get("harness.kind") == "repeat"]
    assert sorted(r.data.tags["harness.seed"] for r in repeats) == ["8", "9"]
    assert all(r.info.status == "FINISHED" for r in repeats)
    assert {r.data.tags["harness.repeat_of"] for r in repeats} == {out.best_run_id}
    parent = client.get_run(out.parent_run_id)
    for r in repeats:  # the best values, another seed, and each scored held out
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.params["recipe.seed"] == r.data.tags["harness.seed"]  # trained with it
        for k, v in out.best_params.items():
            assert r.data.params[f"recipe.{k}"] == str(v)
        assert "after/math_heldout/numeric_accuracy" in r.data.metrics
    held = [out.heldout.after] + [r.data.metrics["after/math_heldout/numeric_accuracy"]
                                        for r in repeats]
    m = parent.data.metrics
    assert m["seeds/n"] == 3
    assert m["seeds/math_heldout/numeric_accuracy/mean"] == pytest.approx(sum(held) / 3)
    assert m["seeds/math_heldout/numeric_accuracy/low"] <= \
        m["seeds/math_heldout/numeric_accuracy/mean"] <= \
        m["seeds/math_heldout/numeric_accuracy/high"]
    # the lead is inside seed noise when the runner-up's objective lies in the 95% prediction
    # interval of one more seed of the best values (3 values: t(0.975, 2))
    import statistics

    import optuna
    study = optuna.load_study(study_name="tiny", storage=d["sweep"]["storage"])
    runner_up = next(t.value for t in study.trials if t.number != out.best_trial)
    objective = [out.best_value] + [r.data.metrics["after/math/numeric_accuracy"]
                                       for r in repeats]
    mean = statistics.fmean(objective)
    half = 4.302652729911275 * statistics.stdev(objective) * math.sqrt(1 + 1 / 3)
    assert parent.data.tags["harness.lead_inside_seed_noise"] == \
        str(mean - half <= runner_up <= mean + half)
    text = open(out.report).read()
    assert "## Seed variance" in text and "95% CI low" in text

    # the same command again: the repeats it has are kept, none is trained twice
    sweep.run_sweep(recipe.build(d, "r.yaml"))
    again = [r for r in client.search_runs([exp.experiment_id])
             if r.data.tags.get("harness.kind") == "repeat"]
    assert len(again) == 2


def test_the_interval_and_the_noise_test():
    spread = seeds._interval([0.2, 0.4, 0.3], "heldout")
    assert spread["heldout_mean"] == pytest.approx(0.3)
    assert spread["heldout_sd"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2)
    assert spread["heldout_low"] == pytest.approx(0.3 - half)
    low, high = seeds._prediction([0.5, 0.52, 0.48])
    assert low < 0.45 < high  # a runner-up at 0.45 is inside seed noise
    assert not low < 0.2 < high
