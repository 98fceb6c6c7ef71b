"""`harness eval`: any model, alone or against another, through a real MLflow store."""
import pytest

from harness.pipeline import prepared, run
from harness.config import recipe
from harness.commands import evaluate
from harness.tracking.tracker import Tracker


@pytest.mark.slow
def test_eval_a_run_against_its_base_and_an_adapter_folder_alone(recipe_dict, tmp_path):
    import mlflow
    r = recipe.build(recipe_dict, "t.yaml", {"trainer.learning_rate": 5e-3})
    tracker = Tracker(r)
    prep = prepared.prepare(r, tracker)
    prepared.evaluate_start(prep)
    trained = run.run_one(prep, r, tracker, "tiny", nested=False)

    ev = recipe.build({"name": "tiny-eval", "eval": recipe_dict["eval"],
                       "tracking": recipe_dict["tracking"], "reports_dir": str(tmp_path / "rep")},
                      "harness eval")
    out = evaluate.run_eval(ev, trained.run_id, recipe_dict["model"]["name"], Tracker(ev))
    cmp = out["comparison"]
    # the pair reproduces the training run's own before/after
    for k in ("math/perplexity", "math/numeric_accuracy"):
        m = cmp[k]
        assert m.after == pytest.approx(trained.comparison[k].after, rel=1e-4)
        assert m.before == pytest.approx(trained.comparison[k].before, rel=1e-4)
        assert m.ci_low <= m.delta <= m.ci_high
    m = mlflow.MlflowClient().get_run(out["run_id"]).data
    assert m.tags["harness.kind"] == "eval" and "p_value/math/perplexity" in m.metrics
    assert "## Before / after" in (tmp_path / "rep" / "tiny-eval" / "report.md").read_text()

    alone = evaluate.run_eval(ev, trained.adapter_dir, None, Tracker(ev))
    assert alone["comparison"] is None
    assert alone["results"]["after"]["math"].metrics["perplexity"] == pytest.approx(
        trained.comparison["math/perplexity"].after, rel=1e-4)


def test_eval_unknown_model_reference(recipe_dict):
    from harness.core.errors import HarnessError
    ev = recipe.build({"name": "e", "tracking": recipe_dict["tracking"]}, "harness eval")
    with pytest.raises(HarnessError, match="'nope' is no model path, Hub id or MLflow run"):
        prepared.model_fields("nope", Tracker(ev))
