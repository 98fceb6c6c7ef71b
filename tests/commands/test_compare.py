"""`harness compare`: several models on the same golden sets, through a real MLflow store and
real trained runs of a tiny model."""
import pytest

from harness.commands import cli, compare
from harness.pipeline import prepared, run
from harness.config import recipe
from harness.eval import stats
from harness.tracking.tracker import Tracker

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(recipe_dict):
    """Two runs of `harness train`'s path: different learning rates, each scored and logged."""
    out = []
    for name, lr in (("slow", 5e-3), ("fast", 2e-2)):
        r = recipe.build(recipe_dict, "t.yaml", {"trainer.learning_rate": lr})
        tracker = Tracker(r)
        prep = prepared.prepare(r, tracker)
        prepared.evaluate_start(prep)
        out.append(run.run_one(prep, r, tracker, name, nested=False))
    return out


def _recipe(recipe_dict, tmp_path, **sets):
    return recipe.build({"name": "cmp", "eval": recipe_dict["eval"],
                         "tracking": recipe_dict["tracking"],
                         "reports_dir": str(tmp_path / "rep")}, "harness compare", sets)


def test_compare_reuses_logged_results_and_adjusts_across_every_pair(recipe_dict, tmp_path,
                                                                      trained, client,
                                                                      write_recipe, capsys):
    a, b = trained
    base = recipe_dict["model"]["name"]
    r = _recipe(recipe_dict, tmp_path)
    out = compare.run_compare(r, [base, a.run_id, b.adapter_dir], Tracker(r), all_pairs=True)
    base_e, a_e, b_e = out["entries"]
    # the run's logged results are reused; a folder (the same model as run b) is scored
    assert a_e.reused == ["math"] and a_e.run_id == a.run_id and b_e.reused == []
    # how they were decoded is part of the results: another path is no reuse
    assert a_e.results["math"].decoding == {
        "task": "causal-lm", "system_prompt": None, "dtype": "float32", "greedy": True,
        "max_new_tokens": 6, "compiled": False}
    assert a_e.label == "slow" and b_e.label == f"{b.run_id}-final"
    for k in ("math/numeric_accuracy", "math/perplexity"):
        assert a_e.results["math"].metrics[k.split("/")[1]] == pytest.approx(
            a.comparison[k].after, rel=1e-5)
        assert b_e.results["math"].metrics[k.split("/")[1]] == pytest.approx(
            b.comparison[k].after, rel=1e-4)
        assert base_e.results["math"].metrics[k.split("/")[1]] == pytest.approx(
            a.comparison[k].before, rel=1e-4)
    # three pairs, Holm across all of them (one family), never below the raw p
    cmp = out["comparisons"]
    assert list(cmp) == [f"slow vs {base_e.label}", f"{b_e.label} vs {base_e.label}",
                         f"{b_e.label} vs slow"]
    raw = {(n, m.key): m.p_value for n, c in cmp.items() for m in c}
    assert len(raw) == 3 * 3  # 3 pairs x (numeric_accuracy, answer_format, perplexity)
    adjusted = stats.holm(raw)
    for (n, k), p in raw.items():
        assert cmp[n][k].p_holm == adjusted[(n, k)] >= p
    # one MLflow run with a nested run per model, linked to its source run
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["harness.kind"] == "compare"
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{out['run_id']}'")
    assert {k.data.tags.get("harness.source_run") for k in kids} == {None, a.run_id}
    assert all("math/numeric_accuracy" in k.data.metrics for k in kids) and len(kids) == 3
    assert any(m.startswith("p_holm/") for m in parent.data.metrics)
    text = (tmp_path / "rep" / "cmp" / "report.md").read_text()
    assert "## Leaderboard" in text and "Holm's adjustment runs across all 9 tests" in text
    assert "Holm p (9 tests)" in text and "### Fixed and broken" in text

    # the command as a user types it, and other decoding settings
    a, b = trained
    path = write_recipe({k: recipe_dict[k] for k in ("eval", "tracking", "reports_dir")})
    assert cli.main(["compare", a.run_id, b.run_id, "--recipe", path]) == 0
    out = capsys.readouterr()
    assert "fast vs slow: math/numeric_accuracy:" in out.out + out.err
    assert "report:" in out.out and "logged results reused" in out.out + out.err
    assert cli.main(["compare", a.run_id, "--recipe", path]) == 2
    assert "compare needs at least two models" in capsys.readouterr().err
    # other decoding settings: the run's logged results (the manifest's 6 new tokens) do not
    # stand for 3 new tokens, so it is scored again
    r = _recipe(recipe_dict, tmp_path, **{"eval.max_new_tokens": 3})
    entries = compare.score(r, [recipe_dict["model"]["name"], a.run_id], Tracker(r))
    assert entries[1].reused == [] and entries[1].results["math"].decoding["max_new_tokens"] == 3
