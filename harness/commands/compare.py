"""`harness compare A B [C ...]`: several models on the same golden sets, each against the first
(or every pair), paired tests with Holm's adjustment across every pair and metric, a
leaderboard report and one MLflow run holding a nested run per model.

A model given as an MLflow run (or a sweep run: its best trial, or a LoggedModel id) reuses the
per-example results that run logged (eval/results.json, its tuned side) for each golden set
whose examples and decoding settings are the ones asked for; the other sets are scored."""
from __future__ import annotations

import gc
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from harness import models
from harness.eval import scoring, stats
from harness.eval.comparison import Comparison, compare
from harness.eval.results import RunResults, read_results, write_results
from harness.core import context, ledger, timing
from harness.pipeline import prepared
from harness.core.errors import HarnessError, phase, say
from harness.eval.scoring import SetResult
from harness.config.recipe import Recipe, build

KIND = "compare"
GENERIC = {"final", "adapter", "model"}  # folder names that say nothing: their parent's is added


@dataclass
class Entry:
    """One compared model: as given, its label in tables and metric keys, its source run."""
    ref: str
    label: str
    run_id: str | None = None
    results: dict[str, SetResult] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # golden sets read from run_id's results


def source_run(fields: dict, tracker) -> str | None:
    """The MLflow run behind a model reference's fields (prepared.model_fields: a run or a
    LoggedModel's run is its init_from; a sweep run means its best trial), or None for a path,
    embedded:<name> or a Hub id."""
    init = fields.get("init_from")
    if not init or Path(init).expanduser().is_dir():
        return None
    view = tracker.read_run(init)
    best = view.tags.get("harness.best_run_id") if view else None
    return best if view and view.tags.get("harness.kind") == "sweep" and best else init


def logged_results(tracker, run_id: str, prep: prepared.Prepared) -> dict[str, SetResult]:
    """The golden sets of `prep` that run `run_id` scored its tuned model on with the same
    examples (prompts and references, in order) and decoding settings (SetResult.decoding: a
    benchmark's own, else scoring.decoding_settings as prep would score)."""
    saved = read_results(tracker, run_id)
    after = saved.after if saved else {}
    out = {}
    for g in prep.goldens:
        res = after.get(g.name)
        wanted = g.decoding(prep.plan.dtype) if hasattr(g, "decoding") else \
            scoring.decoding_settings(g, prep.task, prep.recipe.eval.max_new_tokens,
                                         prep.plan.dtype, prep.compiled)
        if res is None or res.decoding != wanted:
            continue
        if [e.get("prompt") for e in res.examples] == list(g.prompts) and \
                [e.get("reference") for e in res.examples] == list(g.references or
                                                                     [None] * len(g.prompts)):
            out[g.name] = res
    return out


def _label(ref: str, run_id: str | None, tracker, taken: set[str]) -> str:
    """A short name usable in MLflow metric keys: the run's name, else the path's last part."""
    view = tracker.read_run(run_id) if run_id else None
    path = Path(ref.rstrip("/"))
    name = view.name if view else (f"{path.parent.name}-{path.name}" if path.name in GENERIC
                                   else path.name or ref)
    name = re.sub(r"[^\w\-. ]", "_", name)
    label, i = name, 2
    while label in taken:
        label, i = f"{name}-{i}", i + 1
    taken.add(label)
    return label


def score(base: Recipe, refs: list[str], tracker) -> list[Entry]:
    """Each model's results on the recipe's golden sets, reused from its run where they match."""
    entries, taken = [], set()
    for ref in refs:
        fields = prepared.model_fields(ref, tracker)
        run_id = source_run(fields, tracker)
        r = build(base.to_dict(), base.source, {"model": fields})
        prep = prepared.prepare(r, tracker, with_data=False)
        e = Entry(ref, _label(ref, run_id, tracker, taken), run_id)
        if run_id:
            e.results = logged_results(tracker, run_id, prep)
            e.reused = list(e.results)
        todo = [g for g in prep.goldens if g.name not in e.results]
        if e.reused:
            say(f"{e.label}: logged results reused for {', '.join(e.reused)}")
        if todo:
            say(f"scoring {e.label}: {ref}")
            with phase(f"scoring {ref}"), context.timed("score"):
                model = prep.load_model()
                e.results.update(prepared.evaluate(prep, model, todo))
                del model
                gc.collect()
        e.results = {g.name: e.results[g.name] for g in prep.goldens}
        entries.append(e)
    return entries


def pairs(n: int, all_pairs: bool) -> list[tuple[int, int]]:
    """(reference, challenger) indexes: each against the first, or every pair."""
    return list(combinations(range(n), 2)) if all_pairs else [(0, i) for i in range(1, n)]


def pair_name(entries: list[Entry], pair: tuple[int, int]) -> str:
    return f"{entries[pair[1]].label} vs {entries[pair[0]].label}"


def comparisons(entries: list[Entry], all_pairs: bool) -> dict[str, Comparison]:
    """Pair name -> the pair's Comparison, its p_holm adjusted across every pair's keys
    (one family: every test this command reports)."""
    out = {pair_name(entries, p): compare(entries[p[0]].results, entries[p[1]].results)
           for p in pairs(len(entries), all_pairs)}
    adjusted = stats.holm({(name, m.key): m.p_value for name, c in out.items() for m in c})
    return {name: c.with_holm({m.key: adjusted[(name, m.key)] for m in c})
            for name, c in out.items()}


def run_compare(base: Recipe, refs: list[str], tracker, all_pairs: bool = False) -> dict:
    """Score, compare, track (a parent run of kind `compare`, a nested run per model) and
    write the report."""
    from harness.report import markdown
    from harness.tracking.reader import KIND_TAG
    if len(refs) < 2:
        raise HarnessError("compare needs at least two models", file="MODEL_OR_RUN")
    entries = score(base, refs, tracker)
    compared = comparisons(entries, all_pairs)
    with tracker.run(base.name, tags={KIND_TAG: KIND, "harness.compared": ", ".join(refs)}) \
            as run_id:
        tracker.log_params({"compare.models": refs, "compare.all_pairs": all_pairs,
                            "compare.goldensets": base.all_goldensets,
                            "eval.max_new_tokens": base.eval.max_new_tokens})
        for e in entries:
            with tracker.run(e.label, nested=True, tags={
                    KIND_TAG: "compared", "harness.model": e.ref,
                    **({"harness.source_run": e.run_id} if e.run_id else {})}):
                tracker.log_metrics(scoring.flat_metrics(e.results))
                write_results(tracker, RunResults(e.results))
        for name, c in compared.items():
            slug = name.replace(" vs ", "_vs_")
            tracker.log_metrics({f"{side}/{slug}/{k}": v for side in ("delta", "p_value",
                                                                       "p_holm")
                                 for k, v in c.side(side).items()})
        tracker.describe(markdown.compare_note(entries))
        ctx = context.current()
        times, work = ctx.clock.totals(), ctx.ledger.totals()
        tracker.log_metrics({**timing.metrics(times), **ledger.metrics(work)})
        path = markdown.write_compare(base, entries, compared, tracker, run_id, times, work,
                                      machine=models.device_plan(base.model).machine())
        tracker.log_artifacts(str(path.parent), "report")
    return {"run_id": run_id, "report": str(path), "entries": entries, "comparisons": compared}
