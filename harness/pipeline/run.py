"""One training run, the pipeline `harness train` and every sweep trial share: a Prepared
start (harness.pipeline.prepared) -> train (TRL) -> score after -> compare with before -> track."""
from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass, field
from pathlib import Path

from harness.train import checkpoints, steps, trainers
from harness.eval import scoring
from harness.eval.comparison import Comparison, compare, delta_text
from harness.eval.objective import EVAL_LOSS
from harness.eval.results import RunResults, read_results, write_results
from harness.core import context, ledger, timing
from harness.pipeline import manifest
from harness import models
from harness.core.errors import Diverged, HarnessError, phase, say
from harness.pipeline.prepared import (Prepared, datasets, evaluate, evaluate_start, prepare,
                              trial_goldens)
from harness.config.recipe import Recipe


@dataclass
class Outcome:
    run_id: str
    comparison: Comparison
    after: dict
    adapter_dir: str
    train_metrics: dict
    times: dict = field(default_factory=dict)  # seconds per phase (harness.core.timing)
    work: dict = field(default_factory=dict)  # counts (harness.core.ledger)
    model_id: str | None = None  # its LoggedModel, under tracking.log_models

    def objective(self, key: str) -> float:
        """`key`'s value after training: a golden-set metric, or the trainer's eval_loss."""
        if key == EVAL_LOSS:
            return self.train_metrics[EVAL_LOSS]
        return self.comparison[key].after


def logged_objective(tracker, run_id: str, key: str) -> float:
    """A finished run's `key` after training, read back: its golden-set metric, or the
    eval_loss TRL's trainer logged to it (its last value: the evaluation after training)."""
    if key == EVAL_LOSS:
        return tracker.read_run(run_id).metrics[EVAL_LOSS]
    return read_results(tracker, run_id).comparison.after_values()[key]


def log_comparison(tracker, comparison: Comparison, model: tuple | None = None,
                   run_id: str | None = None) -> None:
    """The before/after metrics of the active run (or of run_id, ended). `model`: (run id,
    LoggedModel id, golden sets): the after/ ones are linked to the model and to each set's
    dataset."""
    for side in ("base", "before", "after", "delta", "ci_low", "ci_high", "p_value", "p_holm"):
        if side == "after" and model:
            model_run, model_id, goldens = model
            tracker.log_model_metrics(model_run, model_id, comparison.after_values(), goldens)
            continue
        tracker.log_metrics({f"{side}/{k}": v for k, v in comparison.side(side).items()},
                            run_id=run_id)
    for m in comparison:
        if m.counts_changes:
            tracker.log_metrics({f"fixed/{m.key}": m.fixed, f"broken/{m.key}": m.broken},
                                run_id=run_id)


def log_completions(tracker, out_dir: str) -> None:
    """The completions GRPO sampled while training, with each reward and advantage (the parquet
    files TRL's `log_completions` writes, one per logging step), as one MLflow table."""
    files = sorted((Path(out_dir) / "completions").glob("completions_*.parquet"))
    if not files:
        return
    import pandas as pd

    def text(v):
        v = v.tolist() if hasattr(v, "tolist") else v
        if isinstance(v, list):  # chat turns
            return "\n".join(f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict)
                             else str(m) for m in v)
        return v
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    tracker.log_table([{k: text(v) for k, v in row.items()} for row in frame.to_dict("records")],
                      "completions.json")


def model_kind(recipe: Recipe) -> str:
    """The LoggedModel's model_type: what its files are."""
    return "peft-lora-adapter" if recipe.adapter.type == "lora" else "transformers"


def headline(recipe: Recipe, run_name: str, comparison: Comparison) -> str:
    """One scannable line for the UI: what ran, and the objective (or first metric) before and
    after with its CI."""
    m = comparison.get(recipe.sweep.objective) or next(iter(comparison), None)
    text = f"{run_name}: {recipe.method} on {recipe.model.name} (recipe {recipe.name})"
    if m:
        text += f"; {m.key} {m.before:.4g} -> {m.after:.4g} ({delta_text(m)})"
    return text


def run_tags(recipe: Recipe) -> dict:
    """Tags every run of a recipe carries, so the MLflow UI can filter and compare them."""
    tags = {"harness.config.recipe": recipe.name, "harness.method": recipe.method,
            "harness.model": recipe.model.name, "harness.recipe_hash": recipe.fingerprint()}
    if recipe.model.init_from:
        tags["harness.init_from"] = recipe.model.init_from  # lineage: the run this one builds on
    judges = [r.path for r in recipe.rewards if r.name == "reward_model"]
    if judges:  # the RLHF chain: the reward run(s) whose model scored the completions
        tags["harness.reward_model"] = ",".join(judges)
    return tags


def recipe_params(recipe: Recipe) -> dict:
    """The recipe as a run's params: as written, but with the LoRA alpha it trains with (2 x r
    where it sets none), so runs of a rank sweep show their alpha."""
    params = recipe.to_dict()
    if recipe.adapter.type == "lora":
        params["adapter"]["alpha"] = models.lora_alpha(recipe.adapter)
    return params


def train_and_report(recipe: Recipe, tracker, tags: dict | None = None, name: str | None = None,
                     select: bool = False):
    """The `harness train` pipeline: prepare, score the start, train and score one run, write
    its report. Returns (Outcome, report path)."""
    from harness.train import distributed
    from harness.report import markdown
    prep = prepare(recipe, tracker, select=select)  # select: a sweep trial's golden sets
    if not distributed.is_main():
        try:
            train_alongside(prep, recipe)
        except Diverged:  # rank 0 saw the same averaged loss: it fails the run and says why;
            pass  # failing here first would have torchrun stop rank 0 while it does
        return None, None
    evaluate_start(prep)
    # the run's time/ metrics cover the whole command: preparing and scoring the start too
    outcome = run_one(prep, recipe, tracker, name or recipe.name, nested=False, tags=tags,
                      times_from={})
    with phase("writing the report"), context.timed("report"):
        path = markdown.write_run(recipe, outcome, prep.before, tracker, name,
                                  machine=prep.plan.machine())
        tracker.log_artifacts(str(path.parent), "report", run_id=outcome.run_id)
    tracker.log_metrics(context.current().clock.closing_metrics(), run_id=outcome.run_id)
    return outcome, path


def log_evaluations(recipe: Recipe, tracker, results: dict, of_run: str, name: str,
                    side: str, model_id: str | None = None, adding: dict | None = None) -> str:
    """Each golden set's per-example results as MLflow GenAI evaluation records, in an
    evaluation run of their own, `<name>/<side>`, nested under `of_run` (the run that scored
    them): MLflow 3's UI lists a run that has a LoggedModel output among its training runs and
    one without among its evaluation runs, where records are browsed and one run's compared
    with another's. Inside a sweep the run nests under the sweep run (MLflow nests a run under
    the active one). `model_id` links the records to the model they score. Tags `of_run` with
    the evaluation run's id (harness.evaluations.<side>); returns it. `adding`: the sets of
    `results` that are new to `of_run`'s existing `side` evaluation run, which gets them."""
    from harness.tracking.reader import EVALUATION_OF_TAG, EVALUATIONS_TAG, KIND_TAG
    existing = tracker.read_run(of_run).tags.get(f"{EVALUATIONS_TAG}.{side}") if adding else None
    with phase("logging the evaluation records"), context.timed("evaluations"), \
            tracker.run(f"{name}/{side}", nested=True, run_id=existing, tags={
                **run_tags(recipe), KIND_TAG: side, "mlflow.parentRunId": of_run,
                EVALUATION_OF_TAG: of_run},
                description=f"{name}'s golden-set examples {side} training, as MLflow "
                            "evaluation records") as run_id:
        say(f"evaluation records of {name} ({side}): "
            f"{sum(len(r.examples) for r in results.values())} examples, run {run_id}")
        for res in (adding if existing else results).values():
            tracker.log_evaluation(scoring.genai_records(res), scoring.record_scores(res),
                                   scoring.example_scorers(res), model_id=model_id)
        tracker.check_records(run_id, sum(len(r.examples) for r in results.values()),
                              sum(len(r.examples) * len(r.metrics) for r in results.values()))
    tracker.set_tags({f"{EVALUATIONS_TAG}.{side}": run_id}, run_id=of_run)
    return run_id


def write_evaluations(recipe: Recipe, tracker, results: dict, of_run: str, name: str,
                      side: str, model_id: str | None = None) -> None:
    """`log_evaluations`, on the command's writer thread (harness.core.beside) during a sweep's
    trials where the records take the bulk path, so the next trial trains meanwhile; else
    (genai.evaluate swaps stdout and the global random generator) here. A sweep waits for it
    before it reads them back."""
    if tracker.records_beside():
        context.beside(lambda: log_evaluations(recipe, tracker, results, of_run, name, side,
                                               model_id))
    else:
        log_evaluations(recipe, tracker, results, of_run, name, side, model_id)


def score_held_out(prep: Prepared, recipe: Recipe, tracker, run_id: str) -> bool:
    """Under sweep.heldout_scoring `chosen`: the chosen trial (run `run_id`) scored on the
    held-out parts (and benchmarks) its trial skipped, from its saved adapter (or model), once.
    Its run gets their before/after metrics, the Holm adjustment across all its keys again, their
    example tables and a complete eval/results.json, which the sweep's report and records read.
    Returns whether it scored (False: nothing held out, or scored already)."""
    held = [g for g in prep.goldens if g not in trial_goldens(prep, True)]
    saved = read_results(tracker, run_id)
    if not held or saved is None or all(g.name in saved.after for g in held):
        return False
    view = tracker.read_run(run_id)
    say(f"{view.name}: scoring the chosen trial on {', '.join(g.name for g in held)}")
    with phase(f"scoring {view.name} held out"), context.timed("score_after"):
        model = _trained_model(prep, recipe, tracker, run_id, view)
        after = {**saved.after, **evaluate(prep, model, held)}
        del model
        gc.collect()
        comparison = compare(prep.before, after, prep.base)
    # the new keys' metrics, their Holm p adjusted across every key of the run again
    new = comparison.only(m.key for m in comparison if m.golden_set in {g.name for g in held})
    from harness.tracking.reader import MODEL_TAG
    model_id = view.tags.get(MODEL_TAG)
    log_comparison(tracker, new, (run_id, model_id, held) if model_id else None, run_id)
    for g in held:
        tracker.log_table(scoring.paired_rows(prep.before[g.name], after[g.name]),
                          f"eval/{g.name}_examples.json", run_id=run_id)
    write_results(tracker, RunResults(after, prep.before, comparison), run_id=run_id)
    if recipe.tracking.log_evaluations == "all":  # its after records get the held-out sets
        log_evaluations(recipe, tracker, after, run_id, view.name, "after", model_id,
                        adding={g.name: after[g.name] for g in held})
    return True


def recover(prep: Prepared, recipe: Recipe, tracker, run_id: str) -> Outcome | None:
    """The outcome of a trial whose run had FINISHED (trained, scored, logged) when its
    process was stopped, before Optuna heard of it (while logging its records): read back from
    the run, its records logged again if they were cut off. None: the run had not finished."""
    from harness.tracking.reader import MODEL_TAG
    view = tracker.read_run(run_id)
    saved = read_results(tracker, run_id) if view else None
    if view is None or view.status != "FINISHED" or saved is None or saved.comparison is None \
            or "harness.adapter_dir" not in view.tags:
        return None
    outcome = Outcome(run_id, saved.comparison, saved.after, view.tags["harness.adapter_dir"],
                      {k: v for k, v in view.metrics.items() if k == EVAL_LOSS},
                      model_id=view.tags.get(MODEL_TAG))
    records_again(recipe, tracker, run_id, saved.after)
    return outcome


def records_again(recipe: Recipe, tracker, run_id: str, after: dict | None = None) -> bool:
    """A finished trial's `after` evaluation records written again where its process was
    killed before they were all written (they are written beside the next trial, so a kill can
    cut them off after the trial is complete). Returns whether they were missing."""
    if recipe.tracking.log_evaluations != "all" or not tracker.needs_evaluations(run_id, "after"):
        return False
    from harness.tracking.reader import MODEL_TAG
    view = tracker.read_run(run_id)
    after = after if after is not None else read_results(tracker, run_id).after
    say(f"{view.name}: its evaluation records were cut off; writing them again")
    write_evaluations(recipe, tracker, after, run_id, view.name, "after", view.tags.get(MODEL_TAG))
    return True


def _trained_model(prep: Prepared, recipe: Recipe, tracker, run_id: str, view):
    """A finished run's tuned model, for scoring: the starting model with the run's adapter
    (merged where scoring merges), or its whole saved model."""
    folder = view.tags.get("harness.adapter_dir")
    if not folder or not Path(folder).is_dir():  # another machine's worker trained it
        fetched = Path(recipe.output_dir) / recipe.name / run_id / "fetched"
        folder = tracker.fetch_adapter(run_id, str(fetched))
    if not models.is_adapter(folder):
        with context.timed("model_load"):
            return models.load_model(recipe.model, prep.plan, folder, prep.task)
    from peft import PeftModel
    with context.timed("model_load"):
        model = PeftModel.from_pretrained(prep.load_model(), folder)
        trainers.cast_adapter(model, recipe.adapter, prep.plan)
    # compiled decoding serves the unmerged structure its trials had (one compile a process)
    return model if prep.compiled else models.merged_for_scoring(model, recipe.model, prep.plan)


def train_alongside(prep: Prepared, recipe: Recipe, callbacks: list | None = None) -> None:
    """A rank other than 0: trains in step with rank 0 (DDP), which saves, scores and logs."""
    import tempfile
    train_ds, eval_ds = datasets(prep, recipe)
    with tempfile.TemporaryDirectory() as out:
        trainers.train(recipe, prep.load_model(), prep.tok, train_ds, eval_ds, prep.plan, out,
                    callbacks=callbacks, reward_models=prep.reward_models, handover=prep.handover)
    gc.collect()


def run_one(prep: Prepared, recipe: Recipe, tracker, run_name: str, *, nested: bool,
            tags: dict | None = None, callbacks: list | None = None,
            on_start=None, times_from: dict | None = None,
            resume: tuple[str, str] | None = None) -> Outcome:
    """Train `recipe` (a trial's variant of prep.recipe), score it, log it all to one run.
    A callback that sets `pruned` ends the run KILLED (tagged PRUNED) with TrialPruned.
    The run's time/ metrics are the phases since `times_from` (timing.Clock.totals(); default:
    this call's start), its work/ metrics the counts since then (harness.core.ledger; with
    `times_from`, since the command's start). `resume`: (the killed run of the same values, its
    last checkpoint) to train on from (harness.train.checkpoints)."""
    ctx = context.current()
    mark = ctx.clock.totals() if times_from is None else times_from
    counted = ctx.ledger.totals() if times_from is None else {}
    with context.timed("logging"):  # what the phases inside leave: params, tables, artifacts
        outcome = _run_one(prep, recipe, tracker, run_name, nested=nested, tags=tags,
                           callbacks=callbacks, on_start=on_start, resume=resume)
    policy = recipe.tracking.log_evaluations
    if policy == "all" or (policy == "best" and not nested):
        write_evaluations(recipe, tracker, outcome.after, outcome.run_id, run_name, "after",
                          outcome.model_id)
        if not nested:  # harness train: the start's side too (a sweep's is on its own run)
            write_evaluations(recipe, tracker, prep.before, outcome.run_id, run_name, "before")
    # logged once the run has ended, so that its own logging counts too
    outcome.times = timing.since(ctx.clock.totals(), mark)
    outcome.work = timing.since(ctx.ledger.totals(), counted)  # counts only grow: as for seconds
    tracker.log_metrics({**timing.metrics(outcome.times), **ledger.metrics(outcome.work)},
                        run_id=outcome.run_id)
    return outcome


def _run_one(prep: Prepared, recipe: Recipe, tracker, run_name: str, *, nested: bool,
             tags: dict | None, callbacks: list | None, on_start,
             resume: tuple[str, str] | None) -> Outcome:
    from harness.core.errors import TrialPruned
    from harness.tracking.reader import KIND_TAG
    tags = {**run_tags(recipe), KIND_TAG: "trial" if nested else "train", **(tags or {})}
    with tracker.run(run_name, nested=nested, tags=tags) as run_id:
        if on_start:
            on_start(run_id)
        tracker.log_params({"recipe": recipe_params(recipe), **prep.plan.as_params(),
                            "data": prep.data_info})
        tracker.log_dict(recipe.to_dict(), "recipe.yaml")
        train_ds, eval_ds = datasets(prep, recipe)
        manifest.log(tracker, dataclasses.replace(prep, recipe=recipe), train_ds)
        model = prep.load_model()
        out_dir = str(Path(recipe.output_dir) / recipe.name / run_id)
        if resume:  # the curve so far, as the killed run logged it, then training goes on
            killed, checkpoint = resume
            step = checkpoints.step(checkpoint)
            tracker.set_tags({"harness.resumed_from": killed, "harness.resumed_step": step})
            tracker.log_curve(checkpoints.history(checkpoint))
            say(f"{run_name}: resuming at step {step} from the checkpoint of run {killed}")
        say(f"{run_name}: training ({len(train_ds)} rows)")
        try:
            with phase(f"training {run_name}"), context.timed("train"):
                result = trainers.train(recipe, model, prep.tok, train_ds, eval_ds, prep.plan,
                                     out_dir, callbacks=[*(callbacks or []), steps.writer_window()],
                                     report_to=tracker.report_to,
                                     reward_models=prep.reward_models, handover=prep.handover,
                                     resume_from=resume[1] if resume else None)
        except HarnessError as e:  # the run ends FAILED; the reason is on it
            tracker.set_tags({"harness.error": str(e)})
            raise
        context.count("trained_tokens", trainers.trained_tokens(result))
        log_completions(tracker, out_dir)
        graphed = {k: v for k, v in result.metrics.items() if k.startswith("cuda_graphs/")}
        if graphed:
            tracker.log_metrics(graphed)
        from harness.train import distributed
        if distributed.world_size() > 1:
            tracker.log_params(distributed.params(result.trainer.args, result.trainer))
            tracker.log_metrics({"distributed/in_sync": result.metrics["distributed/in_sync"]})
        stopped = next((cb for cb in callbacks or [] if getattr(cb, "pruned", False)), None)
        if stopped:
            tracker.set_tags({"harness.trial_state": "PRUNED"})
            raise TrialPruned(f"pruned at step {result.trainer.state.global_step}")
        if resume and trainers.saves_by_time(recipe):  # the killed run's served this one
            checkpoints.remove(Path(resume[1]).parent)
        adapter_dir = trainers.save(result, str(Path(out_dir) / "final"))
        tracker.set_tags({"harness.adapter_dir": str(Path(adapter_dir).resolve())})
        # a sweep's trials under `best`: only the best one, once the study knows it (sweep.py)
        logged = recipe.models_logged == "all" or (recipe.models_logged == "best" and not nested)
        model_id = tracker.log_model(run_id, adapter_dir, run_name, model_kind(recipe)) \
            if logged else None
        say(f"{run_name}: scoring the tuned model")
        with phase(f"scoring {run_name}"), context.timed("score_after"):
            # compiled decoding keeps the adapter: its one compile serves the unmerged structure
            scored = result.model if prep.compiled else models.merged_for_scoring(
                result.model, recipe.model, prep.plan)
            after = evaluate(prep, scored, trial_goldens(prep, nested))
            comparison = compare(prep.before, after, prep.base)
        log_comparison(tracker, comparison, (run_id, model_id, prep.goldens) if model_id else None)
        tracker.describe(headline(recipe, run_name, comparison))
        for name, res in after.items():
            tracker.log_table(scoring.paired_rows(prep.before[name], res),
                              f"eval/{name}_examples.json")
        write_results(tracker, RunResults(after, prep.before, comparison))
        outcome = Outcome(run_id, comparison, after, adapter_dir, result.metrics,
                          model_id=model_id)
        del model, result
        gc.collect()
    return outcome
