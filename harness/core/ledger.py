"""What a command did, counted: examples decoded, decoding steps, tokens trained, MLflow writes,
evaluation records. Each run, trial, sweep and eval logs its counts as `work/<count>` metrics
beside its `time/` ones (harness.core.timing), and every report shows them.

Counts, not seconds: the same recipe and data give the same counts on any machine, so CI holds
the default sweep's shape to the table in docs/benchmarks.md (tests/core/test_ledger.py), and a change
that adds work changes that table in the same commit.
"""
from __future__ import annotations

from collections import Counter

#: count -> what the report calls it
COUNTS = {"decoded_examples": "golden-set examples decoded (greedy generation)",
          "decode_steps": "decoding steps (a batch's new tokens, summed over batches)",
          "generated_tokens": "tokens generated (each example's own, to its end)",
          "nll_examples": "examples whose reference perplexity was computed",
          "scored_responses": "responses scored by a reward model or log-probability",
          "benchmark_documents": "lm-eval benchmark documents scored (harness.eval.lm_eval_tasks)",
          "trained_tokens": "tokens trained (TRL's num_tokens at its last logged step)",
          "mlflow_writes": "MLflow writes by the harness (TRL's per-step metrics not counted)",
          "records": "MLflow evaluation records (traces)",
          "assessments": "assessments on those records (one a metric)"}


class Ledger:
    """One command's counts (it is on the command's run context, harness.core.context)."""

    def __init__(self):
        self.counts: Counter = Counter()

    def add(self, count: str, n: int = 1) -> None:
        self.counts[count] += int(n)

    def totals(self) -> dict[str, int]:
        return dict(self.counts)


def metrics(counts: dict[str, int]) -> dict[str, float]:
    return {f"work/{k}": float(v) for k, v in counts.items()}


def from_metrics(metrics_: dict[str, float]) -> dict[str, int]:
    return {k.removeprefix("work/"): int(v) for k, v in metrics_.items() if k.startswith("work/")}


def rows(counts: dict[str, int]) -> list[list]:
    """[what, count] rows in COUNTS order, for a report's table."""
    known = [k for k in COUNTS if k in counts] + sorted(set(counts) - set(COUNTS))
    return [[COUNTS.get(k, k), f"{counts[k]:,}"] for k in known]
