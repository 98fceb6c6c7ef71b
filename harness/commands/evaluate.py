"""`harness eval`: score any model on golden sets without training, alone or as a
before/after pair. load -> validate -> score -> compare -> track -> report."""
from __future__ import annotations

from harness.eval import scoring
from harness.eval.comparison import compare
from harness.eval.results import RunResults, write_results
from harness.core import context, ledger, timing
from harness.pipeline import prepared, run
from harness.core.errors import phase, say
from harness.config.recipe import Recipe, build


def run_eval(base: Recipe, after_ref: str, before_ref: str | None, tracker) -> dict:
    """Score `after_ref` (and `before_ref`) on the recipe's golden sets; one MLflow run."""
    from harness.report import markdown
    from harness.tracking.reader import KIND_TAG
    sides = {"after": after_ref, **({"before": before_ref} if before_ref else {})}
    results = {}
    for side, ref in sides.items():
        r = build(base.to_dict(), base.source, {"model": prepared.model_fields(ref, tracker)})
        prep = prepared.prepare(r, tracker, with_data=False)
        say(f"scoring {side}: {ref}")
        with phase(f"scoring {ref}"), context.timed(f"score_{side}"):
            results[side] = prepared.evaluate(prep, prep.load_model())
    tags = {KIND_TAG: "eval", "harness.model": after_ref,
            **({"harness.before_model": before_ref} if before_ref else {})}
    with tracker.run(base.name, tags=tags) as run_id:
        tracker.log_params({"eval.model": after_ref, "eval.before": before_ref or "",
                            "eval.goldensets": base.all_goldensets})
        if before_ref:
            comparison = compare(results["before"], results["after"])
            run.log_comparison(tracker, comparison)
            for name, res in results["after"].items():
                tracker.log_table(scoring.paired_rows(results["before"][name], res),
                                  f"eval/{name}_examples.json")
        else:
            comparison = None
            tracker.log_metrics(scoring.flat_metrics(results["after"]))
            for name, res in results["after"].items():
                tracker.log_table(res.examples, f"eval/{name}_examples.json")
        write_results(tracker, RunResults(results["after"], results.get("before"), comparison))
        if base.tracking.log_evaluations != "none":  # each side's per-example records
            for side in sides:
                run.log_evaluations(base, tracker, results[side], run_id, base.name, side)
        ctx = context.current()
        times, work = ctx.clock.totals(), ctx.ledger.totals()
        tracker.log_metrics({**timing.metrics(times), **ledger.metrics(work)})
        path = markdown.write_eval(base, sides, results, comparison, tracker, run_id, times, work,
                                   machine=prep.plan.machine())
        tracker.log_artifacts(str(path.parent), "report")
    return {"run_id": run_id, "report": str(path), "results": results, "comparison": comparison}
