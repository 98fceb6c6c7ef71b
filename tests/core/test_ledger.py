"""The cost ledger (harness.core.ledger) held by CI: the default sweep's shape
(recipes/sft_math.yaml:
its sweep file and trials, golden sets and forgetting guard, held-out split, records and
LoggedModels) on the tiny model, scaled down (16 training rows, 20 examples a golden set), its
work/ counts compared with the table in docs/benchmarks.md. A change that adds work changes
that table in the same commit. Counts, not seconds: the same on any machine."""
import re

import pytest
from conftest import ROOT

from harness.commands import cli
from harness.core import context, ledger

pytestmark = [pytest.mark.slow, pytest.mark.fenced]  # a tiny sweep through every CPU fence
TABLE = "## The cost ledger"


def documented() -> dict[str, tuple[str, int]]:
    """count -> ('=' or '<=', value) from docs/benchmarks.md's ledger table."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text[text.index(TABLE):].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (=|≤) ([\d,]+) \|", section, re.M)
    assert rows, f"no rows under {TABLE!r} in docs/benchmarks.md"
    return {k: ("<=" if op == "≤" else "=", int(v.replace(",", ""))) for k, op, v in rows}


def test_the_default_sweeps_work_matches_the_documented_ledger(tmp_path, tiny_model_dir,
                                                              monkeypatch, client):
    import mlflow
    monkeypatch.chdir(tmp_path)  # the recipe's relative stores and outputs land here
    uri = mlflow.get_tracking_uri()
    ctx = context.RunContext()  # the command's, read once it returns
    code = cli.main(["sweep", str(ROOT / "recipes" / "sft_math.yaml"),
                     "--set", f"model.name={tiny_model_dir}", "--set", f"tracking.uri={uri}",
                     "--set", "data.builtin_rows=16", "--set", "eval.max_examples=20",
                     "--set", f"sweep.storage=sqlite:///{tmp_path}/optuna.db"], ctx=ctx)
    assert code == 0
    counted = ctx.ledger.totals()
    exp = client.get_experiment_by_name("sft_math")
    sweep_run = next(r for r in client.search_runs([exp.experiment_id])
                     if r.data.tags.get("harness.kind") == "sweep")
    logged = ledger.from_metrics(sweep_run.data.metrics)
    print("ledger:", counted)
    want = documented()
    got = {k: counted.get(k, 0) for k in want}
    assert set(want) == set(ledger.COUNTS) - {"scored_responses"}
    for k, (op, v) in want.items():
        assert got[k] <= v if op == "<=" else got[k] == v, (k, got[k], op, v)
        if k != "mlflow_writes":  # the sweep run's metrics are logged before its last writes
            assert logged.get(k, 0) == got[k], k
