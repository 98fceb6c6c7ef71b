"""The sweep's objective: its direction inferred in one place, its checks, and what a golden set
of a given size can detect."""
import pytest

from harness.config import recipe
from harness.core.errors import HarnessError
from harness.eval import objective, stats
from harness.eval.scoring import SetResult


def _recipe(**sweep) -> recipe.Recipe:
    return recipe.build({"name": "x", "data": {"eval_rows": 4}, "sweep": sweep})


@pytest.mark.parametrize("sweep, way", [
    ({}, "maximize"),  # math/numeric_accuracy
    ({"objective": "eval_loss"}, "minimize"),
    ({"objective": "chats/perplexity"}, "minimize"),
    ({"objective": "chats/rougeL"}, "maximize"),
    ({"objective": "gsm8k/exact_match,strict-match"}, "maximize"),  # a benchmark's metric
    ({"objective": "eval_loss", "direction": "maximize"}, "maximize"),  # set: kept
    ({"objective": "chats/perplexity", "direction": "maximize"}, "maximize"),
])
def test_the_direction_is_inferred_unless_set(sweep, way):
    assert objective.direction(_recipe(**sweep)) == way


def test_eval_loss_needs_eval_rows_and_a_metric_must_be_known():
    r = recipe.build({"name": "x", "sweep": {"objective": "eval_loss"}})
    with pytest.raises(HarnessError, match="set data.eval_rows") as e:
        objective.check(r, [])
    assert e.value.key == "sweep.objective"
    objective.check(_recipe(objective="eval_loss"), [])
    with pytest.raises(HarnessError, match="did you mean chats/rougeL"):
        objective.check(_recipe(objective="chats/rougeX", space="s.yaml"), ["chats/rougeL"])


def test_a_planned_sizing_states_the_stats_figures():
    s = objective.planned("math", 85, ["numeric_accuracy", "perplexity", "f1"])
    assert s.binary == ("numeric_accuracy",) and s.continuous == ("perplexity", "f1")
    assert s.lifts == tuple((b, stats.detectable_lift(85, b)) for b in objective.PLANNING_BASES)
    line = s.line()
    for _, lift in s.lifts:
        assert f"+{lift * 100:.1f} points" in line
    assert f"{stats.detectable_shift(85):.2f} SD" in line and "80% power" in line


def _result(name: str, metric: str, scores: list[float]) -> SetResult:
    return SetResult(name, {metric: sum(scores) / len(scores)},
                     [{"prompt": str(i), metric: s} for i, s in enumerate(scores)])


def test_observed_sizing_reads_the_before_accuracy_and_the_sd_of_the_differences():
    before = {"m": _result("m", "numeric_accuracy", [1.0] * 20 + [0.0] * 80),
              "c": _result("c", "f1", [0.1, 0.2, 0.3, 0.4] * 2),
              "few": _result("few", "f1", [0.1, 0.2, 0.3, 0.4])}
    after = {"m": _result("m", "numeric_accuracy", [1.0] * 30 + [0.0] * 70),
             "c": _result("c", "f1", [0.2, 0.2, 0.5, 0.4] * 2),
             "few": _result("few", "f1", [0.2, 0.2, 0.5, 0.4])}
    rows = {o.key: o for o in objective.observed(before, after)}
    assert rows["m/numeric_accuracy"].lift == stats.detectable_lift(100, 0.2)
    assert rows["m/numeric_accuracy"].binary and not rows["c/f1"].binary
    sd = objective._sd([0.1, 0.0, 0.2, 0.0] * 2)
    assert rows["c/f1"].lift == pytest.approx(sd * stats.detectable_shift(8))
    assert rows["c/f1"].n == 8
    # 4 pairs: even all improving gives p = 2 / 2**4 = 0.125, so no lift is detectable
    assert rows["few/f1"].lift is None and "no paired test on 4 pairs" in rows["few/f1"].basis
