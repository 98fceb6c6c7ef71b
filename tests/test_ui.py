"""`harness ui` in a real browser: Debian's chromium driven by playwright-core
(tests/ui/check_ui.mjs; `make test` runs tests/ui/setup.sh to install both) on the store of a
real tiny sweep."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.config import recipe
from harness.study import sweep
from tests.conftest import harness_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]
UI = Path(__file__).parent / "ui"


@pytest.fixture
def ui(recipe_dict):
    """`harness ui` on the tiny recipe's store."""
    with harness_server("ui", "--backend-store-uri", recipe_dict["tracking"]["uri"]) as served:
        yield served


def test_sweep_trials_metrics_and_compare_view_in_chromium(recipe_dict, tmp_path, ui):
    assert shutil.which("chromium") and (UI / "node_modules" / "playwright-core").is_dir(), \
        "the browser test needs tests/ui/setup.sh (make test runs it)"
    import mlflow
    (tmp_path / "space3.yaml").write_text(
        "n_trials: 3\nsampler: random\nparams:\n"
        "  trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n")
    d = dict(recipe_dict, sweep=dict(recipe_dict["sweep"], space=str(tmp_path / "space3.yaml")))
    out = sweep.run_sweep(recipe.build(d, "t.yaml"))
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on runs
    url, first_line = ui
    assert url in first_line  # `harness ui` prints where it listens
    shots = Path(os.environ.get("HARNESS_UI_SHOTS") or tmp_path / "screenshots")
    shots.mkdir(exist_ok=True)
    best = client.get_run(out.best_run_id)
    after_run = best.data.tags["harness.evaluations.after"]
    before_run = client.get_run(out.parent_run_id).data.tags["harness.evaluations.before"]
    proc = subprocess.run(["node", str(UI / "check_ui.mjs"), url, exp.experiment_id, str(shots),
                           after_run, before_run], capture_output=True, text=True, timeout=300,
                          cwd=UI)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in seen, seen
    assert seen["trials"] == ["trial-0", "trial-1", "trial-2"]  # nested under the sweep run
    for key in ("after/math/numeric_accuracy", "delta/math"):
        assert any(m.startswith(key) for m in seen["chart_metrics"]), seen["chart_metrics"]
    assert seen["compare_heading"].startswith("Comparing 3 Runs")
    assert "delta/math/numeric_accuracy" in seen["compare_metrics"]
    # the Models tab: each trial's LoggedModel, its scores as columns, linked to the golden set
    assert seen["models"] == ["trial-0", "trial-1", "trial-2"]
    assert "after/math/numeric_accuracy" in seen["models_text"]
    assert "math (#" in seen["models_text"]  # the golden set's dataset, by name and digest
    # the Evaluation runs view: the best trial's records beside the start's, example by example
    name = client.get_run(after_run).info.run_name  # trial-N/after
    assert re.fullmatch(rf"Comparing (#\w+ )?{name} to (#\w+ )?tiny/before",
                        seen["evaluation_heading"]), seen["evaluation_heading"]
    text = seen["evaluation_text"]
    saved = json.loads(Path(client.download_artifacts(out.best_run_id, "eval/results.json",
                                                      str(tmp_path))).read_text())
    examples = [ex for res in saved["after"].values() for ex in res["examples"]]
    assert f"{len(examples)} of {len(examples)}" in text, text  # one row an example
    assert "Assessments" in text, text  # a column a metric
    for ex in examples:  # each golden prompt, on the page
        assert ex["prompt"][:25] in text, ex["prompt"]
    for name in ("runs.png", "charts.png", "compare.png", "models.png", "evaluations.png"):
        assert (shots / name).stat().st_size > 20_000
    assert "math/numeric_accuracy" in best.data.tags["mlflow.note.content"]  # the description
    mlflow.set_tracking_uri(None)
