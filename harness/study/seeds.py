"""Seed variance (`sweep.repeat_best: K`): the best trial's values trained again with K more
seeds (the recipe's seed + 1 ... + K), each a run of the sweep (kind `repeat`), scored like a
trial and on the held-out part. The sweep then reports the held-out metric's mean and 95%
interval across the seeds, and whether the best trial's lead over the runner-up on the objective
is inside seed noise: the runner-up's value lies inside the 95% prediction interval of one more
seed of the best values."""
from __future__ import annotations

import math

from harness.eval.results import read_results
from harness.pipeline import run
from harness.core.errors import say
from harness.config.recipe import Recipe, with_values


def repeat_best(prep, recipe: Recipe, tracker, best: dict, runner_up: float | None,
                heldout_key: str | None, study: str, parent: str) -> dict:
    """`best`: the chosen trial's values (recipe key paths), run id, objective value and
    held-out value. Returns the spread the sweep logs (`metrics`) and reports (`line`,
    harness.report)."""
    from harness.tracking.reader import KIND_TAG, STUDY_TAG
    key = recipe.sweep.objective
    objective, held = [best["value"]], [best["heldout"]]
    seeds = [recipe.seed]
    for i in range(1, recipe.sweep.repeat_best + 1):
        seed = recipe.seed + i
        variant = with_values(recipe, {**best["values"], "seed": seed})
        tags = {STUDY_TAG: study, KIND_TAG: "repeat", "harness.repeat_of": best["run_id"],
                "harness.seed": seed}
        run_id = tracker.find_run(tags)  # a resumed sweep keeps the repeats it has
        if run_id is None:
            say(f"repeat {i} of the best trial's values: seed {seed}")
            outcome = run.run_one(prep, variant, tracker, f"repeat-{i}", nested=True,
                                  tags={**tags, "mlflow.parentRunId": parent})
            run_id = outcome.run_id
        if heldout_key:
            run.score_held_out(prep, variant, tracker, run_id)
        after = read_results(tracker, run_id).comparison.after_values()
        objective.append(run.logged_objective(tracker, run_id, key))
        held.append(after.get(heldout_key) if heldout_key else None)
        seeds.append(seed)
    out = {"seeds": seeds, "objective": objective, "objective_key": key,
           **_interval(objective, "objective"), "runner_up": runner_up}
    if heldout_key and None not in held:
        out.update(heldout_key=heldout_key, heldout=held, **_interval(held, "heldout"))
    low, high = _prediction(objective)
    out["inside_noise"] = None if runner_up is None else bool(low <= runner_up <= high)
    return out


def _spread(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation, and the t quantile for a 95% interval (n - 1 degrees)."""
    import statistics

    from scipy import stats
    n = len(values)
    if n < 2:
        return values[0], 0.0, 0.0
    return statistics.fmean(values), statistics.stdev(values), float(stats.t.ppf(0.975, n - 1))


def _interval(values: list[float], name: str) -> dict:
    """Mean, sample standard deviation and the 95% t interval of the mean."""
    mean, sd, t = _spread(values)
    half = t * sd / math.sqrt(len(values))
    return {f"{name}_mean": mean, f"{name}_sd": sd, f"{name}_low": mean - half,
            f"{name}_high": mean + half}


def _prediction(values: list[float]) -> tuple[float, float]:
    """The 95% prediction interval of one more seed's value."""
    mean, sd, t = _spread(values)
    half = t * sd * math.sqrt(1 + 1 / len(values))
    return mean - half, mean + half


def metrics(spread: dict) -> dict[str, float]:
    """The sweep run's `seeds/` metrics."""
    out = {"seeds/n": len(spread["seeds"])}
    for name, key in (("objective", spread["objective_key"]),
                      ("heldout", spread.get("heldout_key"))):
        if key is None or f"{name}_mean" not in spread:
            continue
        for stat in ("mean", "sd", "low", "high"):
            out[f"seeds/{key}/{stat}"] = spread[f"{name}_{stat}"]
    return out


def line(spread: dict) -> str:
    """One line for the terminal and the report."""
    text = f"{len(spread['seeds'])} seeds"
    if "heldout_key" in spread:
        text += (f": held out {spread['heldout_key']} {spread['heldout_mean']:.4g} "
                 f"(95% CI [{spread['heldout_low']:.4g}, {spread['heldout_high']:.4g}])")
    if spread["inside_noise"] is not None:
        text += ("; the best trial's lead over the runner-up is inside seed noise"
                 if spread["inside_noise"] else
                 "; the best trial's lead over the runner-up is larger than seed noise")
    return text
