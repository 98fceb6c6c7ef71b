"""One training run, the pipeline `harness train` and every sweep trial share:
load data and model -> train (TRL) -> evaluate after -> compare with before -> track."""
from __future__ import annotations

import dataclasses
import gc
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from harness import data, evaluation, goldensets, manifest, models, shipped, timing, train
from harness.errors import HarnessError, phase
from harness.recipe import Recipe


def say(msg: str) -> None:
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


@dataclass
class Prepared:
    """What every trial of a sweep shares: resolved model, tokenizer, data, golden sets, base
    scores. Built once, so a sweep loads and scores the base model once."""
    recipe: Recipe
    task: str  # causal-lm or seq-cls, from the trainer kind
    plan: models.DevicePlan
    model_path: str  # the base model (or init_from's full model)
    tok: object
    goldens: list
    init_adapter: str | None = None  # init_from's adapter, merged into the base
    train_ds: object = None
    eval_ds: object = None
    data_info: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)  # golden set -> SetResult
    base: dict = field(default_factory=dict)  # the original base, when init_from is set
    compiled: bool = False  # golden sets decoded compiled (evaluation.compiled_decoding)

    def load_model(self, adapter: bool = True):
        """A fresh copy of the starting model (the base, or the base with init_from merged)."""
        with timing.timed("model_load"):
            return models.load_model(self.recipe.model, self.plan, self.model_path, self.task,
                                     self.init_adapter if adapter else None)


def check(recipe: Recipe) -> list:
    """Everything `harness validate` checks without loading a model: schema (done by load),
    the TRL fields, the names of built-in data and embedded models, golden-set manifests and
    the objective."""
    train.check_trainer_fields(recipe)
    if recipe.data.train.startswith("builtin:"):
        data.BUILTIN_DATA.get(recipe.data.train, file=recipe.source, key="data.train")
    if recipe.model.name.startswith("embedded:"):
        models.EMBEDDED.get(recipe.model.name.split(":", 1)[1], file=recipe.source,
                            key="model.name")
    task = train.kind(recipe).task
    manifests = []
    for i, path in enumerate(recipe.all_goldensets):
        key = f"eval.goldensets.{i}" if i < len(recipe.eval.goldensets) else \
            "eval.forgetting_guard"
        try:
            found = shipped.locate(path, "goldensets")
        except HarnessError as e:
            raise HarnessError(e.message, file=recipe.source, key=key) from None
        if found is None:
            raise HarnessError(f"golden-set manifest {path!r} not found", file=recipe.source,
                               key=key)
        manifests.append(goldensets.load_manifest(found))
        evaluation.check_fit(manifests[-1], found)
    keys = [f"{m.name}/{metric}" for m in manifests
            for metric in evaluation.metric_names(m, task)]
    if recipe.sweep.space and recipe.sweep.objective not in keys:
        from harness.errors import did_you_mean
        raise HarnessError(f"objective {recipe.sweep.objective!r} is no golden-set metric of this "
                           f"recipe{did_you_mean(recipe.sweep.objective, keys)} (known: "
                           f"{', '.join(keys)})", file=recipe.source, key="sweep.objective")
    if recipe.sweep.space and not _sweep_file(recipe):
        raise HarnessError(f"sweep file {recipe.sweep.space!r} not found", file=recipe.source,
                           key="sweep.space")
    return manifests


def _sweep_file(recipe: Recipe) -> str | None:
    try:
        return shipped.locate(recipe.sweep.space, "sweeps")
    except HarnessError as e:
        raise HarnessError(e.message, file=recipe.source, key="sweep.space") from None


def resolve_init(recipe: Recipe, tracker) -> str | None:
    """init_from as a local folder: a path as given, or an MLflow run's adapter."""
    ref = recipe.model.init_from
    if ref is None:
        return None
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    if ref.startswith((".", "/", "~")):
        raise HarnessError(f"init_from path {ref!r} does not exist", file=recipe.source,
                           key="model.init_from")
    run_id = ref.removeprefix("runs:/").strip("/")
    dest = Path(recipe.output_dir) / recipe.name / f"init-{run_id}"
    return tracker.fetch_adapter(run_id, str(dest))


def prepare(recipe: Recipe, tracker=None, with_data: bool = True, scorings: int = 2) -> Prepared:
    """`scorings`: how many models this process will score (a sweep: the base and each trial),
    which decides whether decoding is compiled."""
    from harness.errors import located
    with located(recipe.source), phase("loading the model, data and golden sets"), \
            timing.timed("data"):
        prep = _prepare(recipe, tracker, with_data, scorings)
        if not gc.isenabled():
            # The CLI kept the collector off through set-up (harness.cli.main). What is alive
            # now (libraries, tokenizer, rows, golden sets; no model yet) lives as long as the
            # command: frozen, the full collection after each trial (which returns a model's
            # memory) scans only what came after, not the millions of objects of torch and
            # transformers.
            gc.enable()
            gc.collect()
            gc.freeze()
    return prep


def _prepare(recipe: Recipe, tracker, with_data: bool, scorings: int) -> Prepared:
    from harness import distributed
    check(recipe)
    distributed.setup()  # before CUDA starts: which GPU this process trains on
    k = train.kind(recipe)
    plan = models.device_plan(recipe.model)
    say(f"device {plan.device}, dtype {plan.dtype}; resolving model {recipe.model.name}")
    with timing.timed("model_load"):
        path = models.resolve(recipe.model)
        tok = models.load_tokenizer(recipe.model, path)
    goldens = [goldensets.load(p, recipe.eval.max_examples) for p in recipe.all_goldensets]
    train.check_device(recipe, plan)
    prep = Prepared(recipe, k.task, plan, path, tok, goldens)
    with timing.timed("model_load"):
        init = resolve_init(recipe, tracker)
    if init and models.is_adapter(init):
        prep.init_adapter = init
    elif init:
        prep.model_path = init
    if init:
        say(f"starting from {recipe.model.init_from} ({init})")
    scorings += bool(recipe.model.init_from)  # the original base is scored too
    steps = scorings * evaluation.decode_steps(goldens, batch_size(prep),
                                               recipe.eval.max_new_tokens, k.task)
    prep.compiled = evaluation.compiled_decoding(recipe.eval.decoding, plan.device, steps)
    if prep.compiled:  # kept across processes, past /tmp clean-ups; keyed by GPU inside
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(
            models.cache_dir() / "inductor" / f"torch-{version('torch')}"))
    if steps and plan.device == "cuda":
        say(f"decoding {'compiled' if prep.compiled else 'eager'}: at most {steps} steps over "
            f"{scorings} scorings (eval.decoding: {recipe.eval.decoding})")
    sets = ", ".join(f"{g.name} ({len(g.prompts)})" for g in goldens)
    if not with_data:
        say(f"golden sets: {sets}")
        return prep
    prep.train_ds, prep.eval_ds, prep.data_info = data.load_train(recipe.data, recipe.seed,
                                                                  k.data_kind)
    max_length = recipe.trainer.get("max_length", train.default_field(recipe, "max_length"))
    longer = data.check_lengths(prep.train_ds, tok, max_length, recipe.data.train)
    if longer:
        say(f"warning: {longer} of the first rows are longer than max_length={max_length} and "
            "will be truncated")
    say(f"data: {prep.data_info['rows_train']} training rows ({prep.data_info['format']}), "
        f"golden sets: {sets}")
    return prep


def batch_size(prep: Prepared) -> int:
    return prep.recipe.eval.batch_size or (256 if prep.plan.device == "cuda" else 32)


def evaluate(prep: Prepared, model) -> dict:
    return evaluation.evaluate_model(model, prep.tok, prep.goldens, batch_size(prep),
                                     prep.recipe.eval.max_new_tokens, prep.task, prep.compiled)


def evaluate_start(prep: Prepared) -> None:
    """Score the starting model ('before'); with init_from, the original base too ('base')."""
    say("scoring the starting model on the golden sets")
    for side, with_init in (("before", True), ("base", False)):
        if side == "base" and not prep.recipe.model.init_from:
            break
        with phase(f"scoring the {'starting' if with_init else 'base'} model"), \
                timing.timed("score_before"):
            model = as_trials_are(prep, prep.load_model(adapter=with_init))
            setattr(prep, side, evaluate(prep, model))
            del model
            gc.collect()


def as_trials_are(prep: Prepared, model):
    """With compiled decoding, the starting model is scored inside the LoRA structure its trials
    will have, its B matrices zero (peft's own initialisation: every adapter adds exactly 0, so
    the outputs are the base's): the decoder compiled for it then serves every trial, instead of
    compiling once for the base and once more for the first trial."""
    spec = prep.recipe
    if not prep.compiled or spec.adapter.type != "lora" or spec.model.quantization != "none":
        return model
    from peft import get_peft_model
    model = get_peft_model(model, models.lora_config(spec.adapter, prep.task))
    train.cast_adapter(model, spec.adapter, prep.plan)
    return model


def start_to_json(prep: Prepared) -> dict:
    return {"before": evaluation.results_to_json(prep.before),
            "base": evaluation.results_to_json(prep.base)}


def start_from_json(prep: Prepared, d: dict) -> None:
    prep.before = evaluation.results_from_json(d["before"])
    prep.base = evaluation.results_from_json(d["base"])


@dataclass
class Outcome:
    run_id: str
    comparison: dict  # before/after/delta/changes, flat metric keys
    after: dict
    adapter_dir: str
    train_metrics: dict
    times: dict = field(default_factory=dict)  # seconds per phase (harness.timing)

    def objective(self, key: str) -> float:
        return self.comparison["after"][key]


def log_comparison(tracker, comparison: dict) -> None:
    for side in ("base", "before", "after", "delta", "ci_low", "ci_high", "p_value"):
        tracker.log_metrics({f"{side}/{k}": v for k, v in comparison.get(side, {}).items()})
    for key, c in comparison["changes"].items():
        tracker.log_metrics({f"fixed/{key}": c["fixed"], f"broken/{key}": c["broken"]})


def headline(recipe: Recipe, run_name: str, comparison: dict) -> str:
    """One scannable line for the UI: what ran, and the objective (or first metric) before and
    after with its CI."""
    key = recipe.sweep.objective if recipe.sweep.objective in comparison["after"] else \
        next(iter(comparison["after"]), None)
    text = f"{run_name}: {recipe.method} on {recipe.model.name} (recipe {recipe.name})"
    if key:
        ci = (f" [{comparison['ci_low'][key]:+.3g}, {comparison['ci_high'][key]:+.3g}]"
              if key in comparison.get("ci_low", {}) else "")
        text += (f"; {key} {comparison['before'][key]:.4g} -> {comparison['after'][key]:.4g} "
                 f"({comparison['delta'][key]:+.4g}{ci})")
    return text


def run_tags(recipe: Recipe) -> dict:
    """Tags every run of a recipe carries, so the MLflow UI can filter and compare them."""
    tags = {"harness.recipe": recipe.name, "harness.method": recipe.method,
            "harness.model": recipe.model.name, "harness.recipe_hash": recipe.fingerprint()}
    if recipe.model.init_from:
        tags["harness.init_from"] = recipe.model.init_from  # lineage: the run this one builds on
    return tags


def train_and_report(recipe: Recipe, tracker, tags: dict | None = None, name: str | None = None):
    """The `harness train` pipeline: prepare, score the start, train and score one run, write
    its report. Returns (Outcome, report path)."""
    from harness import distributed, report
    prep = prepare(recipe, tracker)
    if not distributed.is_main():
        train_alongside(prep, recipe)
        return None, None
    evaluate_start(prep)
    # the run's time/ metrics cover the whole command: preparing and scoring the start too
    outcome = run_one(prep, recipe, tracker, name or recipe.name, nested=False, tags=tags,
                      times_from={})
    with phase("writing the report"), timing.timed("report"):
        path = report.write_run(recipe, outcome, prep.before, tracker, name)
        tracker.log_artifacts(str(path.parent), "report", run_id=outcome.run_id)
    tracker.log_metrics(timing.closing_metrics(), run_id=outcome.run_id)
    return outcome, path


def datasets(prep: Prepared, recipe: Recipe) -> tuple:
    """The training and held-out rows of `recipe`: prep's, unless the recipe (a trial) changes
    the data."""
    if recipe.data == prep.recipe.data:
        return prep.train_ds, prep.eval_ds
    train_ds, eval_ds, _ = data.load_train(recipe.data, recipe.seed, train.kind(recipe).data_kind)
    return train_ds, eval_ds


def train_alongside(prep: Prepared, recipe: Recipe, callbacks: list | None = None) -> None:
    """A rank other than 0: trains in step with rank 0 (DDP), which saves, scores and logs."""
    import tempfile
    train_ds, eval_ds = datasets(prep, recipe)
    with tempfile.TemporaryDirectory() as out:
        train.train(recipe, prep.load_model(), prep.tok, train_ds, eval_ds, prep.plan, out,
                    callbacks=callbacks)
    gc.collect()


def slice_score(prep: Prepared, model, key: str, n: int) -> float:
    """`key` ('math/numeric_accuracy') on the first n examples of its golden set: the cheap
    intermediate objective a pruner watches during training."""
    import dataclasses as dc
    name, metric = key.split("/", 1)
    gs = next(g for g in prep.goldens if g.name == name)
    part = dc.replace(gs, prompts=gs.prompts[:n], references=gs.references[:n],
                      chosen=gs.chosen and gs.chosen[:n], rejected=gs.rejected and gs.rejected[:n])
    with timing.timed("score_pruner"):
        return evaluation.evaluate_set(model, prep.tok, part, batch_size(prep),
                                       prep.recipe.eval.max_new_tokens, prep.task,
                                       prep.compiled).metrics[metric]


def run_one(prep: Prepared, recipe: Recipe, tracker, run_name: str, *, nested: bool,
            tags: dict | None = None, callbacks: list | None = None,
            on_start=None, times_from: dict | None = None) -> Outcome:
    """Train `recipe` (a trial's variant of prep.recipe), score it, log it all to one run.
    A callback that sets `pruned` ends the run KILLED (tagged PRUNED) with TrialPruned.
    The run's time/ metrics are the phases since `times_from` (timing.Clock.totals(); default:
    this call's start)."""
    mark = timing.CLOCK.totals() if times_from is None else times_from
    with timing.timed("logging"):  # what the phases inside leave: params, tables, artifacts
        outcome = _run_one(prep, recipe, tracker, run_name, nested, tags, callbacks, on_start)
    # logged once the run has ended, so that its own logging counts too
    outcome.times = timing.since(timing.CLOCK.totals(), mark)
    tracker.log_metrics(timing.metrics(outcome.times), run_id=outcome.run_id)
    return outcome


def _run_one(prep, recipe, tracker, run_name, nested, tags, callbacks, on_start):
    from harness.errors import TrialPruned
    from harness.tracking import KIND_TAG
    tags = {**run_tags(recipe), KIND_TAG: "trial" if nested else "train", **(tags or {})}
    with tracker.run(run_name, nested=nested, tags=tags) as run_id:
        if on_start:
            on_start(run_id)
        tracker.log_params({"recipe": recipe.to_dict(), **prep.plan.as_params(),
                            "data": prep.data_info})
        tracker.log_dict(recipe.to_dict(), "recipe.yaml")
        train_ds, eval_ds = datasets(prep, recipe)
        manifest.log(tracker, dataclasses.replace(prep, recipe=recipe), train_ds)
        model = prep.load_model()
        out_dir = str(Path(recipe.output_dir) / recipe.name / run_id)
        say(f"{run_name}: training ({len(train_ds)} rows)")
        try:
            with phase(f"training {run_name}"), timing.timed("train"):
                result = train.train(recipe, model, prep.tok, train_ds, eval_ds, prep.plan,
                                     out_dir, callbacks=callbacks, report_to=tracker.report_to)
        except HarnessError as e:  # the run ends FAILED; the reason is on it
            tracker.set_tags({"harness.error": str(e)})
            raise
        if "cuda_graphs/steps" in result.metrics:
            tracker.log_metrics({"cuda_graphs/steps": result.metrics["cuda_graphs/steps"]})
        from harness import distributed
        if distributed.world_size() > 1:
            tracker.log_params(distributed.params(result.trainer.args))
            tracker.log_metrics({"distributed/in_sync": result.metrics["distributed/in_sync"]})
        stopped = next((cb for cb in callbacks or [] if getattr(cb, "pruned", False)), None)
        if stopped:
            tracker.set_tags({"harness.trial_state": "PRUNED"})
            raise TrialPruned(f"pruned at step {result.trainer.state.global_step}")
        adapter_dir = train.save(result, str(Path(out_dir) / "final"))
        tracker.set_tags({"harness.adapter_dir": str(Path(adapter_dir).resolve())})
        if not nested:  # a sweep uploads only its best trial's adapter
            tracker.log_artifacts(adapter_dir, "adapter")
        say(f"{run_name}: scoring the tuned model")
        with phase(f"scoring {run_name}"), timing.timed("score_after"):
            # compiled decoding keeps the adapter: its one compile serves the unmerged structure
            scored = result.model if prep.compiled else models.merged_for_scoring(
                result.model, recipe.model, prep.plan)
            after = evaluate(prep, scored)
            comparison = evaluation.compare(prep.before, after)
        if prep.base:
            comparison["base"] = evaluation.flat_metrics(prep.base)
        log_comparison(tracker, comparison)
        tracker.describe(headline(recipe, run_name, comparison))
        for name, res in after.items():
            tracker.log_table(evaluation.paired_rows(prep.before[name], res),
                              f"eval/{name}_examples.json")
        tracker.log_dict({"comparison": comparison, "after": evaluation.results_to_json(after),
                          "before": evaluation.results_to_json(prep.before)}, "eval/results.json")
        outcome = Outcome(run_id, comparison, after, adapter_dir, result.metrics)
        del model, result
        gc.collect()
    return outcome
