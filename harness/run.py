"""One training run, the pipeline `harness train` and every sweep trial share:
load data and model -> train (TRL) -> evaluate after -> compare with before -> track."""
from __future__ import annotations

import dataclasses
import gc
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness import data, evaluation, goldensets, models, train
from harness.errors import HarnessError
from harness.recipe import Recipe


def say(msg: str) -> None:
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


@dataclass
class Prepared:
    """What every trial of a sweep shares: resolved model, tokenizer, data, golden sets, base
    scores. Built once, so a sweep loads and scores the base model once."""
    recipe: Recipe
    plan: models.DevicePlan
    model_path: str
    tok: object
    goldens: list
    train_ds: object = None
    eval_ds: object = None
    data_info: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)  # golden set -> SetResult


def check(recipe: Recipe) -> list:
    """Everything `harness validate` checks without loading a model: schema (done by load),
    the TRL fields, golden-set manifests and the objective."""
    train.check_trainer_fields(recipe)
    manifests = []
    for i, path in enumerate(recipe.eval.goldensets):
        if not Path(path).is_file():
            raise HarnessError(f"golden-set manifest {path!r} not found", file=recipe.source,
                               key=f"eval.goldensets.{i}")
        manifests.append(goldensets.load_manifest(path))
    keys = [f"{m.name}/{metric}" for m in manifests for metric in m.metrics]
    if recipe.sweep.objective not in keys:
        from harness.errors import did_you_mean
        raise HarnessError(f"objective {recipe.sweep.objective!r} is no golden-set metric of this "
                           f"recipe{did_you_mean(recipe.sweep.objective, keys)} (known: "
                           f"{', '.join(keys)})", file=recipe.source, key="sweep.objective")
    if recipe.sweep.space and not Path(recipe.sweep.space).is_file():
        raise HarnessError(f"sweep file {recipe.sweep.space!r} not found", file=recipe.source,
                           key="sweep.space")
    return manifests


def prepare(recipe: Recipe) -> Prepared:
    check(recipe)
    plan = models.device_plan(recipe.model)
    say(f"device {plan.device}, dtype {plan.dtype}; resolving model {recipe.model.name}")
    path = models.resolve(recipe.model)
    tok = models.load_tokenizer(recipe.model, path)
    goldens = [goldensets.load(p, recipe.eval.max_examples) for p in recipe.eval.goldensets]
    prep = Prepared(recipe, plan, path, tok, goldens)
    prep.train_ds, prep.eval_ds, prep.data_info = data.load_train(recipe.data, recipe.seed)
    say(f"data: {prep.data_info['rows_train']} training rows ({prep.data_info['format']}), "
        f"golden sets: {', '.join(f'{g.name} ({len(g.prompts)})' for g in goldens)}")
    return prep


def evaluate(prep: Prepared, model) -> dict:
    return evaluation.evaluate_model(model, prep.tok, prep.goldens, prep.recipe.eval.batch_size,
                                     prep.recipe.eval.max_new_tokens)


def evaluate_base(prep: Prepared) -> dict:
    say("scoring the base model on the golden sets")
    model = models.load_model(prep.recipe.model, prep.plan, prep.model_path)
    results = evaluate(prep, model)
    del model
    gc.collect()
    return results


def results_to_json(results: dict) -> dict:
    return {k: dataclasses.asdict(v) for k, v in results.items()}


def results_from_json(d: dict) -> dict:
    return {k: evaluation.SetResult(**v) for k, v in d.items()}


@dataclass
class Outcome:
    run_id: str
    comparison: dict  # before/after/delta/changes, flat metric keys
    after: dict
    adapter_dir: str
    train_metrics: dict
    log_history: list

    def objective(self, key: str) -> float:
        return self.comparison["after"][key]


def log_comparison(tracker, comparison: dict) -> None:
    for side in ("before", "after", "delta"):
        tracker.log_metrics({f"{side}/{k}": v for k, v in comparison[side].items()})
    for key, c in comparison["changes"].items():
        tracker.log_metrics({f"fixed/{key}": c["fixed"], f"broken/{key}": c["broken"]})


def run_one(prep: Prepared, recipe: Recipe, tracker, run_name: str, *, nested: bool,
            tags: dict | None = None, callbacks: list | None = None) -> Outcome:
    """Train `recipe` (a trial's variant of prep.recipe), score it, log it all to one run."""
    from harness.tracking import KIND_TAG
    tags = {KIND_TAG: "trial" if nested else "train", "harness.recipe": recipe.name,
            "harness.method": recipe.method, "harness.model": recipe.model.name, "harness.recipe_hash": recipe.fingerprint(),
            **(tags or {})}
    with tracker.run(run_name, nested=nested, tags=tags) as run_id:
        tracker.log_params({"recipe": recipe.to_dict(), **prep.plan.as_params(),
                            "data": prep.data_info})
        tracker.log_dict(recipe.to_dict(), "recipe.yaml")
        train_ds, eval_ds = prep.train_ds, prep.eval_ds
        if recipe.data != prep.recipe.data:  # a trial that changes the data reloads it
            train_ds, eval_ds, _ = data.load_train(recipe.data, recipe.seed)
        model = models.load_model(recipe.model, prep.plan, prep.model_path)
        out_dir = str(Path(recipe.output_dir) / recipe.name / run_id)
        say(f"{run_name}: training ({len(train_ds)} rows)")
        result = train.train(recipe, model, prep.tok, train_ds, eval_ds, prep.plan, out_dir,
                             callbacks=callbacks, report_to=tracker.report_to)
        adapter_dir = train.save(result, str(Path(out_dir) / "final"))
        say(f"{run_name}: scoring the tuned model")
        after = evaluate(prep, result.model)
        comparison = evaluation.compare(prep.before, after)
        log_comparison(tracker, comparison)
        for name, res in after.items():
            rows = [{"prompt": b["prompt"], "reference": b["reference"],
                     "before": b["prediction"], "after": a["prediction"],
                     **{f"before/{m}": b[m] for m in res.metrics},
                     **{f"after/{m}": a[m] for m in res.metrics}}
                    for b, a in zip(prep.before[name].examples, res.examples)]
            tracker.log_table(rows, f"eval/{name}_examples.json")
        tracker.log_dict({"comparison": comparison, "after": results_to_json(after)},
                         "eval/results.json")
        outcome = Outcome(run_id, comparison, after, adapter_dir, result.metrics,
                          result.log_history)
        del model, result
        gc.collect()
    return outcome
