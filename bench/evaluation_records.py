"""What MLflow GenAI evaluation records (tracking.log_evaluations) cost a run: the shipped golden
sets scored with made-up model outputs (a reference for every other example, a wrong number
for the rest; nll and token counts drawn), then logged as one evaluation run through
`run.log_evaluations` on a fresh store, timed; every assessment read back and compared with
the harness's own per-example score.

    python bench/evaluation_records.py [--tracking sqlite:////tmp/records.db]
        [--sets goldensets/math.yaml goldensets/general_knowledge.yaml]
"""
from __future__ import annotations

import argparse
import math
import random
import tempfile
import time

from harness.eval import goldensets, metrics
from harness.config import recipe
from harness.pipeline import run
from harness.eval.scoring import SetResult


def scored(path: str) -> SetResult:
    """A SetResult as evaluation.evaluate_set makes one, from made-up outputs."""
    gs = goldensets.load(path)
    rng = random.Random(0)
    preds = [r if i % 2 else "#### 12345" for i, r in enumerate(gs.references)]
    cols = {"predictions": preds, "references": gs.references,
            "nll": [rng.uniform(20, 200) for _ in preds],
            "tokens": [rng.randint(20, 80) for _ in preds]}
    examples = [{"prompt": p, "reference": r, "prediction": y}
                for p, r, y in zip(gs.prompts, gs.references, preds)]
    values, args = {}, {}
    for name in gs.manifest.metrics:
        args[name] = goldensets.metric_args(gs.manifest, name)
        res = metrics.compute(name, cols, args[name])
        values[name] = res[name]
        for ex, s in zip(examples, res["scores"]):
            ex[name] = s
    return SetResult(gs.name, values, examples, cols, args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["goldensets/math.yaml",
                                                  "goldensets/general_knowledge.yaml"])
    ap.add_argument("--tracking", help="default: a new SQLite store in a temporary folder")
    args = ap.parse_args()
    from harness.tracking.tracker import Tracker
    with tempfile.TemporaryDirectory() as d:
        uri = args.tracking or f"sqlite:///{d}/mlflow.db"
        r = recipe.build({"name": "records", "tracking": {"uri": uri}}, "bench")
        tracker = Tracker(r)
        results = {res.name: res for res in map(scored, args.sets)}
        n = sum(len(res.examples) for res in results.values())
        with tracker.run("source") as source:
            pass
        t = time.perf_counter()
        eval_run = run.log_evaluations(r, tracker, results, source, "source", "after")
        wall = time.perf_counter() - t
        got = tracker.evaluation_scores(eval_run)
        want = {(ex["prompt"], f"{s}/{m}"): ex[m] for s, res in results.items()
                for ex in res.examples for m in res.metrics}
        same = sum(1 for k, v in want.items() if k in got and (
            math.isclose(got[k], v, rel_tol=1e-9) or (math.isnan(v) and math.isnan(got[k]))))
    print(f"store {uri.split(':')[0]}; {n} examples, {len(want)} assessments in "
          f"{wall:.1f} s: {1000 * wall / n:.0f} ms an example; equal to the harness's "
          f"per-example scores: {same} of {len(want)}")


if __name__ == "__main__":
    main()
