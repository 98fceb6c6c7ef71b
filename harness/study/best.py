"""A finished study's best trial: scored on the held-out part no selection read (HeldOut), its
values trained again with more seeds (harness.study.seeds), its LoggedModel and evaluation
records, and the sweep run's best/ metrics and tags that say which trial it was."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.config.recipe import Recipe
from harness.eval import objective
from harness.eval.comparison import change_line
from harness.eval.results import read_results
from harness.pipeline import run
from harness.study import seeds
from harness.study.attrs import TrialAttrs


@dataclass(frozen=True)
class HeldOut:
    """The best trial's objective metric on the held-out part of its golden set."""
    key: str  # 'math_heldout/numeric_accuracy'
    before: float
    after: float
    line: str  # what the terminal and the sweep run's description say


def conclude(prep, recipe: Recipe, tracker, study, name: str, parent: str,
             trials: int) -> tuple[HeldOut | None, dict | None]:
    """What a sweep does once its trials are done, on the best one: logs best/ metrics, scores
    the held-out part, repeats the values with more seeds (sweep.repeat_best), logs its model
    and records as the recipe asks, and tags the sweep run with it. Returns the held-out result
    (None without a split) and the seed spread (None without repeats)."""
    from harness.tracking.reader import BEST_MODEL_TAG
    best = study.best_trial
    attrs = TrialAttrs.of(best)
    tracker.log_metrics({f"best/{recipe.sweep.objective}": best.value})
    # the held-out part, read by no selection, scored for the chosen trial alone
    run.score_held_out(prep, recipe, tracker, attrs.run_id)
    heldout = held_out_result(recipe, tracker, attrs.run_id, trials)
    if heldout:
        tracker.log_metrics({f"best_before/{heldout.key}": heldout.before,
                             f"best_after/{heldout.key}": heldout.after})
        tracker.describe(heldout.line)
    spread = _repeat(prep, recipe, tracker, study, name, parent, heldout) \
        if recipe.sweep.repeat_best else None
    # tags, not params: a resumed study may find a new best, and MLflow params are final
    best_model = _logged_model(recipe, tracker, attrs, prep.goldens)
    if recipe.tracking.log_evaluations == "best":
        _evaluations(recipe, tracker, attrs.run_id, best_model)
    tracker.set_tags({"harness.best_trial": best.number, "harness.best_run_id": attrs.run_id,
                      **({BEST_MODEL_TAG: best_model} if best_model else {}),
                      **{f"best.{k}": v for k, v in best.params.items()}})
    return heldout, spread


def _repeat(prep, recipe: Recipe, tracker, study, name: str, parent: str,
            heldout: HeldOut | None) -> dict:
    """sweep.repeat_best: the best values again with more seeds (harness.study.seeds), logged on the
    sweep run as `seeds/` metrics and the tag harness.lead_inside_seed_noise."""
    import optuna
    best = study.best_trial
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
            and t.number != best.number]
    higher = objective.direction(recipe) == "maximize"
    runner_up = (max if higher else min)((t.value for t in done), default=None)
    spread = seeds.repeat_best(
        prep, recipe, tracker, {"values": best.params, "value": best.value,
                                "run_id": TrialAttrs.of(best).run_id,
                                "heldout": heldout.after if heldout else None},
        runner_up, heldout.key if heldout else None, name, parent)
    tracker.log_metrics(seeds.metrics(spread))
    if spread["inside_noise"] is not None:
        tracker.set_tags({"harness.lead_inside_seed_noise": spread["inside_noise"]})
    return spread


def _logged_model(recipe: Recipe, tracker, best: TrialAttrs, goldens) -> str | None:
    """The best trial's LoggedModel id: logged with the trial under tracking.log_models `all`;
    under `best`, logged now from the trial's adapter folder (when this machine has it)."""
    from harness.tracking.reader import MODEL_TAG
    view = tracker.read_run(best.run_id) if best.run_id else None
    if view is None or recipe.models_logged == "none":
        return None
    if view.tags.get(MODEL_TAG):
        return view.tags[MODEL_TAG]
    folder = best.adapter_dir
    if recipe.models_logged != "best" or not folder or not Path(folder).is_dir():
        return None
    model_id = tracker.log_model(best.run_id, folder, view.name, run.model_kind(recipe))
    tracker.log_model_metrics(best.run_id, model_id,
                              {k.removeprefix("after/"): v for k, v in view.metrics.items()
                               if k.startswith("after/")}, goldens)
    return model_id


def _evaluations(recipe: Recipe, tracker, run_id: str, model_id: str | None) -> None:
    """Under tracking.log_evaluations `best`: the best trial's per-example records, from the
    results it logged, once (a resumed study whose best is unchanged has them)."""
    view = tracker.read_run(run_id) if run_id else None
    if view is None or not tracker.needs_evaluations(run_id, "after"):
        return
    saved = read_results(tracker, run_id)
    if saved:
        run.log_evaluations(recipe, tracker, saved.after, run_id, view.name, "after", model_id)


def held_out_result(recipe: Recipe, tracker, run_id: str, trials: int) -> HeldOut | None:
    """The best trial's (run `run_id`) before/after on the held-out part of the objective's
    golden set (what the sweep run's headline and description give), or None without a
    split."""
    from harness.eval.goldensets import HELDOUT
    if recipe.sweep.objective == objective.EVAL_LOSS:  # no golden set was split
        return None
    set_name, metric = recipe.sweep.objective.split("/", 1)
    saved = read_results(tracker, run_id)
    m = saved.comparison.get(f"{set_name}{HELDOUT}/{metric}") \
        if saved and saved.comparison else None
    if m is None:
        return None
    return HeldOut(m.key, m.before, m.after,
                   f"best of {trials} trials (chosen on {recipe.sweep.objective}), held out: "
                   + change_line(m))
