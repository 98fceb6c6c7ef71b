"""Markdown reports from what tracking and evaluation return: reports/<name>/report.md."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from harness.core import ledger, timing
from harness.report import plots
from harness.eval.comparison import Comparison, delta_text
from harness.eval.results import read_results
from harness.eval.scoring import SetResult, flat_metrics
from harness.eval import objective, stats
from harness.eval.stats import EXACT_BELOW, better, format_p
from harness.config.recipe import Recipe


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def before_after(comparison: Comparison, tests: int | None = None) -> str:
    """A row per metric: (base,) before, after, delta with its 95% CI, the paired test's p
    and its Holm adjustment across the table (or across `tests` tests, where the adjustment
    covered more than this table); a note when the pairs are too few for the CI."""
    base = comparison.base
    rows = [[m.key, *([base.get(m.key, "")] if base else []), m.before, m.after, delta_text(m),
             f"{format_p(m.p_value)} ({m.test})" if m.p_value is not None else "",
             format_p(m.p_holm) if m.p_holm is not None else "",
             f"{m.fixed} / {m.broken}" if m.counts_changes else ""] for m in comparison]
    holm = sum(m.p_holm is not None for m in comparison)
    out = table(["metric", *(["base"] if base else []), "before", "after",
                 "delta [95% CI]", "p (paired test)", f"Holm p ({tests or holm} tests)",
                 "fixed / broken"], rows)
    few = sorted({m.golden_set: m.n for m in comparison
                  if m.n is not None and m.n < EXACT_BELOW}.items())
    if few:
        out += ("\n\n**Few examples**: " + ", ".join(f"{s} has {n}" for s, n in few)
                + f". Below {EXACT_BELOW} pairs the bootstrap CI is unreliable; the p-values "
                "are exact tests.")
    return out


def _short(text, n: int = 160) -> str:
    if isinstance(text, list):  # a conversation (a multi-turn golden-set prompt)
        text = " / ".join(f"{t.get('role')}: {t.get('content')}" for t in text)
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _shown(ex: dict) -> str:
    """What a model produced for one example: its generation, or its preference scores."""
    if "prediction" in ex:
        return _short(ex["prediction"])
    if "chosen_score" in ex:
        return f"chosen {ex['chosen_score']:.4g} vs rejected {ex['rejected_score']:.4g}"
    return ""


def changed(before: dict[str, SetResult], comparison: Comparison, n: int = 10) -> str:
    """Per 0/1 metric, the examples the tuning fixed and the ones it broke (prompts, by row)."""
    lines = []
    for m in comparison:
        if not (m.fixed or m.broken) or m.fixed_ids is None or m.broken_ids is None:
            continue
        exs = before[m.golden_set].examples
        for kind, ids in (("fixed", m.fixed_ids), ("broken", m.broken_ids)):
            shown = "; ".join(f"#{i + 1} {_short(exs[i]['prompt'], 60)}" for i in ids[:n])
            more = f"; and {len(ids) - n} more" if len(ids) > n else ""
            lines.append(f"- `{m.key}` {kind} {len(ids)}" + (f": {shown}{more}" if ids else ""))
    return "\n".join(lines) or "No example changed on a 0/1 metric."


def examples(before: dict[str, SetResult], after: dict[str, SetResult], n: int = 6) -> str:
    """A handful per golden set: changed cases first (fixed, then broken), then the rest."""
    out = []
    for name, res in after.items():
        key = next(iter(res.metrics))  # the set's first metric decides fixed/broken
        up = res.metric(key).higher_is_better
        pairs = list(zip(before[name].examples, res.examples))
        ranked = ([p for p in pairs if better(up, p[0][key], p[1][key])]
                  + [p for p in pairs if better(up, p[1][key], p[0][key])]
                  + [p for p in pairs if p[1][key] == p[0][key]])[:n]
        rows = [[_short(b["prompt"], 100),
                 _short(b.get("reference", b.get("chosen", "")).split("####")[-1], 20),
                 _shown(b), b[key], _shown(a), a[key]] for b, a in ranked]
        out.append(f"### {name}\n\n" + table(["prompt", "reference", "before", key, "after",
                                                key], rows))
    return "\n\n".join(out)


def _image(name: str | None) -> list[str]:
    return [f"![{name[:-4].replace('_', ' ')}]({name})", ""] if name else []


def _write(recipe: Recipe, name: str, body: list[str], what: str | None = None,
           machine: str | None = None) -> Path:
    """`what`: the header's note on what was run (default: the recipe's method and model);
    `machine`: where it ran (DevicePlan.machine), so a figure is never read without it."""
    path = report_dir(recipe, name) / "report.md"
    what = what or f"method `{recipe.method}`, model `{recipe.model.name}`"
    where = f" Ran on {machine}." if machine else ""
    head = [f"# {name}", "", f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by "
            f"trl-harness from `{recipe.source}` ({what}).{where}", ""]
    from harness.tracking.reader import redact_tree
    tail = ["", "## Recipe", "", "```yaml", yaml.safe_dump(redact_tree(recipe.to_dict()),
                                                         sort_keys=False).rstrip(), "```", ""]
    path.write_text("\n".join(head + body + tail))
    return path


def report_dir(recipe: Recipe, name: str) -> Path:
    path = Path(recipe.reports_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def time_table(times: dict[str, float], work: dict[str, int] | None = None) -> list[str]:
    """'Where the time went' lines and the work done (harness.core.ledger), or none when nothing was
    timed or counted (an older run)."""
    out = ["## Where the time went", "", table(["phase", "seconds", "share"],
                                              timing.rows(times)), ""] if times else []
    if work:
        out += ["## Work done", "", table(["what", "count"], ledger.rows(work)), ""]
    return out


@dataclass
class TrialRow:
    """One trial of a study as a report reads it (harness.sweep.summary makes them)."""
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, ...
    params: dict
    after: dict  # the after/ metrics, flat keys
    run_id: str  # its MLflow run
    times: dict  # seconds per phase


@dataclass
class SweepSummary:
    name: str  # the study's
    best: TrialRow
    best_value: float
    trials: list[TrialRow]
    seeds: dict | None = None  # sweep.repeat_best's spread (harness.study.seeds)
    sampling: str = ""  # where trials' values came from (harness.study.samplers.describe)


def write_sweep(recipe: Recipe, study: SweepSummary, before: dict, tracker,
                images: list[str] = (), times: dict[str, float] | None = None,
                work: dict[str, int] | None = None, machine: str | None = None) -> Path:
    key = recipe.sweep.objective
    best = study.best
    extra = sorted(k for k in best.after if k != key)
    rows = []
    for t in study.trials:
        # a pruned trial's value is its last intermediate report, not the objective
        rows.append([t.number, t.state, *[t.params.get(p, "") for p in best.params],
                     t.after.get(key, ""), *[t.after.get(k, "") for k in extra], t.run_id])
    out = report_dir(recipe, study.name)
    curves = {f"trial {t.number}" + ("" if t.state == "COMPLETE" else f" ({t.state})"):
              tracker.curves(t.run_id) for t in study.trials}
    body = ["## Best trial", "",
            f"Trial {best.number}: **{key} = {study.best_value:.4g}** "
            f"({objective.direction(recipe)}), MLflow run `{best.run_id}` in experiment "
            f"`{tracker.experiment}` ({tracker.uri}). The best of "
            f"{sum(t.state == 'COMPLETE' for t in study.trials)} completed trials.", "",
            table(["param", "value"], [[k, v] for k, v in best.params.items()]), "",
            "## All trials", "",
            *([f"Sampler: {study.sampling}.", ""] if study.sampling else []),
            table(["trial", "state", *best.params, key, *extra, "run id"], rows), ""]
    body += _seeds(study.seeds)
    body += ["## Training", ""] + _image(plots.loss_curves(curves, out))
    body += time_table(times or {}, work)
    trial_times: dict[str, float] = {}
    for t in study.trials:
        for k, v in t.times.items():
            trial_times[k] = trial_times.get(k, 0.0) + v
    if trial_times:  # workers' trials too, which ran in other processes
        body += ["Finished trials, summed over trials:", "",
                 table(["phase", "seconds", "share"], timing.rows(trial_times)), ""]
    if images:
        body += ["## Study", ""] + [line for i in images for line in _image(i)]
    saved = read_results(tracker, best.run_id)
    if saved and saved.comparison is not None:
        cmp = saved.comparison
        body += ["## Before / after (best trial)", "", selection_note(recipe, cmp), "",
                 before_after(cmp), "", *_image(plots.before_after(cmp, out)),
                 *detectable(before, saved.after),
                 "## Fixed and broken (best trial)", "", changed(before, cmp), "",
                 "## Examples (best trial)", "", examples(before, saved.after)]
    return _write(recipe, study.name, body, machine=machine)


def _seeds(spread: dict | None) -> list[str]:
    """sweep.repeat_best: the best values' metrics per seed, their mean and 95% interval, and
    whether the lead over the runner-up is inside seed noise."""
    if not spread:
        return []
    names = [("objective", spread["objective_key"])]
    if "heldout_key" in spread:
        names.append(("heldout", spread["heldout_key"]))
    rows = [[seed, *[f"{spread[n][i]:.4g}" for n, _ in names]]
            for i, seed in enumerate(spread["seeds"])]
    rows += [[label, *[f"{spread[f'{n}_{stat}']:.4g}" for n, _ in names]]
             for label, stat in (("mean", "mean"), ("sd", "sd"), ("95% CI low", "low"),
                                 ("95% CI high", "high"))]
    lines = ["## Seed variance (the best trial's values, sweep.repeat_best)", "",
             table(["seed", *[k for _, k in names]], rows), ""]
    if spread["inside_noise"] is not None:
        lines += [f"Runner-up on `{spread['objective_key']}`: {spread['runner_up']:.4g}. The "
                  "best trial's lead is " + ("**inside seed noise**: another seed of the best "
                  "values could land below the runner-up." if spread["inside_noise"] else
                  "**larger than seed noise** (the runner-up lies outside the 95% prediction "
                  "interval of one more seed)."), ""]
    return lines


def detectable(before: dict[str, SetResult], after: dict[str, SetResult]) -> list[str]:
    """'What these golden sets can detect': per metric, the smallest lift its paired test finds
    with the stated power (harness.eval.objective.observed), so a null result reads as 'too
    small to see' or 'absent' rather than as neither."""
    rows = [[o.key, o.n, "—" if o.lift is None else f"+{o.lift * 100:.1f} points"
             if o.binary else f"{o.lift:.3g}", o.basis] for o in objective.observed(before, after)]
    if not rows:
        return []
    return ["## What these golden sets can detect", "",
            f"The smallest lift each metric's paired test finds at p < {stats.ALPHA:g} with "
            f"{stats.POWER:.0%} power on these examples; a smaller true lift mostly shows as a "
            "CI across 0.", "", table(["metric", "examples", "detectable lift", "from"], rows),
            ""]


def selection_note(recipe: Recipe, comparison: Comparison) -> str:
    """Which rows of a sweep's before/after were chosen on and which were held out."""
    from harness.eval.goldensets import HELDOUT
    if recipe.sweep.objective == objective.EVAL_LOSS:
        return ("The best trial was chosen on `eval_loss` (the trainer's loss on data.eval_rows); "
                "no golden set took part in the choice.")
    chosen = recipe.sweep.objective.split("/", 1)[0]
    held = chosen + HELDOUT
    count = lambda s: next((m.n for m in comparison  # noqa: E731
                            if m.golden_set == s and m.n is not None), "?")
    if not any(m.golden_set == held for m in comparison):
        return (f"The best trial was chosen on `{chosen}`, the set these figures come from: "
                "they lean optimistic (sweep.heldout: 0).")
    return (f"**Read `{held}`** ({count(held)} examples held out from selection and pruning): "
            f"the estimate of the best trial. `{chosen}` ({count(chosen)} examples) is what the "
            "best was selected on; its figures lean optimistic.")


def write_run(recipe: Recipe, outcome, before: dict, tracker, name: str | None = None,
              machine: str | None = None) -> Path:
    name = name or recipe.name
    out = report_dir(recipe, name)
    body = ["## Run", "", f"MLflow run `{outcome.run_id}` in experiment `{tracker.experiment}` "
            f"({tracker.uri}); adapter in `{outcome.adapter_dir}`.", "",
            table(["train metric", "value"], [[k, v] for k, v in outcome.train_metrics.items()]),
            "", *_image(plots.loss_curves({name: tracker.curves(outcome.run_id)}, out)),
            "## Before / after", "", before_after(outcome.comparison), "",
            *_image(plots.before_after(outcome.comparison, out)),
            *detectable(before, outcome.after),
            "## Fixed and broken", "", changed(before, outcome.comparison), "",
            "## Examples", "", examples(before, outcome.after), "",
            *time_table(outcome.times, outcome.work)]
    return _write(recipe, name, body, machine=machine)


def write_eval(recipe: Recipe, sides: dict, results: dict, comparison: Comparison | None,
               tracker, run_id: str, times: dict[str, float] | None = None,
               work: dict[str, int] | None = None, machine: str | None = None) -> Path:
    body = ["## Models", "", table(["side", "model"], [[k, v] for k, v in sides.items()]), "",
            f"MLflow run `{run_id}` in experiment `{tracker.experiment}` ({tracker.uri}).", ""]
    if comparison is not None:
        body += ["## Before / after", "", before_after(comparison), "",
                 "## Fixed and broken", "", changed(results["before"], comparison), "",
                 "## Examples", "", examples(results["before"], results["after"])]
    else:
        body += ["## Scores", "", table(["metric", "value"], [[k, v] for k, v in
                                                               flat_metrics(results["after"])
                                                               .items()])]
    body += ["", *time_table(times or {}, work)]
    return _write(recipe, recipe.name, body, machine=machine)


def leaderboard(entries, primary: str) -> str:
    """One row per model, best first on `primary` (in its metric's direction), every metric."""
    keys = list(flat_metrics(entries[0].results))
    name, metric = primary.split("/", 1)
    up = entries[0].results[name].metric(metric).higher_is_better
    flat = [(e, flat_metrics(e.results)) for e in entries]
    flat.sort(key=lambda ef: ef[1][primary], reverse=up)
    return table(["rank", "model", *keys], [[i + 1, e.label, *(m[k] for k in keys)]
                                           for i, (e, m) in enumerate(flat)])


def compare_note(entries) -> str:
    """The compare run's description in the MLflow UI: what each nested run stands for."""
    return "Compared: " + "; ".join(
        f"{e.label} = `{e.ref}`" + (f" (run `{e.run_id}`)" if e.run_id else "") for e in entries)


def write_compare(recipe: Recipe, entries, compared: dict[str, Comparison], tracker, run_id: str,
                  times: dict[str, float] | None = None,
                  work: dict[str, int] | None = None, machine: str | None = None) -> Path:
    """`harness compare`'s report: the models, a leaderboard, then each pair's deltas (Holm
    across every pair) with the examples fixed and broken."""
    keys = list(flat_metrics(entries[0].results))
    primary = recipe.sweep.objective if recipe.sweep.objective in keys else keys[0]
    tests = sum(len(c) for c in compared.values())
    body = ["## Models", "", table(["model", "reference", "MLflow run", "results"], [
        [e.label, f"`{e.ref}`", f"`{e.run_id}`" if e.run_id else "",
         "scored" if not e.reused else "logged" if len(e.reused) == len(e.results)
         else f"logged ({', '.join(e.reused)}), rest scored"] for e in entries]), "",
            f"MLflow run `{run_id}` in experiment `{tracker.experiment}` ({tracker.uri}); a "
            "nested run per model, to compare in the UI.", "",
            f"## Leaderboard (by `{primary}`)", "", leaderboard(entries, primary), "",
            f"Holm's adjustment runs across all {tests} tests below (every pair, every metric).",
            ""]
    by_label = {e.label: e for e in entries}
    for name, c in compared.items():
        first = by_label[name.split(" vs ", 1)[1]]
        body += [f"## {name}", "", f"before = {first.label}, after = "
                 f"{name.split(' vs ', 1)[0]}.", "", before_after(c, tests), "",
                 "### Fixed and broken", "", changed(first.results, c), ""]
    body += time_table(times or {}, work)
    return _write(recipe, recipe.name, body, f"{len(entries)} models compared", machine)
