"""The Optuna study: opened on its storage, resumed, run trial by trial (one nested MLflow run
each) or by workers; Optuna's plots and the study's summary the report reads. The search itself
(space, samplers, pruners) is harness.search."""
from __future__ import annotations

import math
import os
from pathlib import Path

from harness.train import distributed
from harness.core import context, ledger, timing
from harness.report import plots
from harness.pipeline import prepared, run
from harness.study import retries, seeds
from harness.study import storage as stores
from harness.core.errors import Diverged, HarnessError, TrainingFault, TrialPruned, phase, say
from harness.config.recipe import Recipe, SweepFile, with_values
from harness.study.search import PRUNERS, SAMPLERS, load_space, pruning_callback, trial_values

DEFAULT_STORAGE = "sqlite:///optuna.db"


def sweep_run(study, tracker) -> str | None:
    """The MLflow run of this study, to resume it: the one the study names, if the tracking
    store still has it. A new study (optuna.db deleted, or another storage) gets a new run,
    even where the experiment holds an old sweep run of the same name; a study started before
    the study named its run is matched by name."""
    parent = study.user_attrs.get("mlflow_run_id")
    if parent:
        return parent if tracker.run_params(parent) is not None else None
    return tracker.find_sweep_run(study.study_name) if study.trials else None


def study_name(recipe: Recipe) -> str:
    return recipe.sweep.study_name or recipe.name


def sampler_seed(seed: int, worker: int, existing: int) -> int:
    """The sampler's seed for a process joining a study that holds `existing` trials (TPE,
    random; a grid takes the sweep file's, see open_study). A sampler seeded as before replays
    its draws from the start (TPE's start-up trials are random), so a resumed study or a second
    worker would repeat finished trials' values: each start draws from a seed of its own,
    derived from the sweep file's, so reruns stay reproducible."""
    if existing == 0:
        return seed + worker
    import hashlib
    return int.from_bytes(hashlib.sha256(f"{seed}:{worker}:{existing}".encode()).digest()[:4],
                          "little")


def open_study(recipe: Recipe, space: SweepFile, worker: int = 0):
    """Create or load the study; a trial whose process died (on this machine: its pid is gone;
    elsewhere: the heartbeat) is failed and its parameters retried once (harness.storage)."""
    import optuna
    url = recipe.sweep.storage or DEFAULT_STORAGE
    storage = stores.open_storage(url, space)
    study = optuna.create_study(study_name=study_name(recipe), storage=storage,
                                pruner=PRUNERS.get(space.pruner.type, key="pruner.type")(
                                    space.pruner),
                                direction=recipe.sweep.direction, load_if_exists=True)
    # Optuna's GridSampler gives trial N the N-th point of the grid it shuffled with its seed:
    # every process on the study must shuffle alike, or two of them run one point twice
    seed = space.seed if space.sampler == "grid" else sampler_seed(
        space.seed, worker, len(study.get_trials(deepcopy=False)))
    study.sampler = SAMPLERS.get(space.sampler, key="sampler")(
        space.model_copy(update={"seed": seed}))
    failed = stores.fail_orphans(study, storage)
    if failed:
        say(f"trial {', '.join(map(str, failed))}: its process is gone; failed, its values "
            "will run again")
    return study


def finished(study) -> list:
    import optuna
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def _stop_at(total: int):
    """Stop a worker once finished + running trials reach `total`, so parallel workers share
    one budget without overshooting it: Optuna's MaxTrialsCallback, counting running ones."""
    import optuna
    state = optuna.trial.TrialState
    return optuna.study.MaxTrialsCallback(total, states=(state.COMPLETE, state.PRUNED,
                                                         state.RUNNING))


def _setup():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the harness says what trials do
    return optuna


def _objective(recipe: Recipe, space: SweepFile, prep, tracker, study, parent: str, total: int):
    import optuna

    from harness.tracking.tracker import STUDY_TAG
    name, key = study_name(recipe), recipe.sweep.objective

    def objective(trial):
        trial.set_user_attr("worker", stores.worker_id())
        values = trial_values(space, trial)
        shown = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else
                          f"{k.split('.')[-1]}={v}" for k, v in values.items())
        done = [t for t in finished(study) if t.value is not None and t.state.name == "COMPLETE"]
        best = (max if recipe.sweep.direction == "maximize" else min)(
            (t.value for t in done), default=None)
        say(f"trial {trial.number} ({len(finished(study)) + 1}/{total}): {shown}"
            + (f"; best so far {key} {best:.4g}" if best is not None else ""))
        callbacks = [] if space.pruner.type == "none" else [
            pruning_callback(trial, space.pruner, prep, key, recipe.sweep.direction, tracker)]
        variant, killed = with_values(recipe, values), retries.retried_runs(study, trial)
        # stopped after its run finished (logging its records): what it logged is the outcome
        outcome = run.recover(prep, variant, tracker, killed[0]) if killed else None
        if outcome:
            say(f"trial {trial.number}: run {outcome.run_id} of its values had finished; its "
                "results kept, no training again")
            trial.set_user_attr("mlflow_run_id", outcome.run_id)
        elif distributed.world_size() > 1:  # the trial's other processes train these values
            distributed.share(values)
        try:
            outcome = outcome or run.run_one(
                prep, variant, tracker, f"trial-{trial.number}",
                nested=True, tags={STUDY_TAG: name, "harness.trial": trial.number,
                                   "mlflow.parentRunId": parent},
                callbacks=callbacks, resume=retries.resume_point(recipe, killed),
                on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
        except TrialPruned as e:
            say(f"trial {trial.number}: {e}")
            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the next start retries these values
            trial.set_user_attr("interrupted", True)
            raise
        except TrainingFault as e:
            say(f"trial {trial.number} failed: {e}")
            trial.set_user_attr("error", str(e))
            raise
        trial.set_user_attr("adapter_dir", outcome.adapter_dir)
        trial.set_user_attr("after", outcome.comparison["after"])
        trial.set_user_attr("times", outcome.times)
        value = outcome.objective(key)
        say(f"trial {trial.number}: {key} {value:.4g} "
            f"(base {outcome.comparison['before'][key]:.4g})")
        if math.isnan(value):
            raise HarnessError(f"objective {key} is NaN", key="sweep.objective")
        return value
    return objective


def _optimize(recipe, space, prep, tracker, study, parent, total) -> None:
    if total - len(finished(study)) > 0:
        # a diverged, out-of-memory or disk-full trial fails; the study goes on
        study.optimize(_objective(recipe, space, prep, tracker, study, parent, total),
                       timeout=space.timeout_s, callbacks=[_stop_at(total)],
                       catch=(TrainingFault,))


def study_plots(study, out_dir) -> list[str]:
    """Optuna's matplotlib plots: optimization history, parameter importances, parallel
    coordinates (each only when the study has what it needs)."""
    plt = plots.pyplot()
    import optuna
    from optuna.visualization import matplotlib as ovm
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    wanted = [("optimization_history.png", ovm.plot_optimization_history, 1),
              ("param_importances.png", ovm.plot_param_importances, 2),
              ("parallel_coordinate.png", ovm.plot_parallel_coordinate, 2)]
    made = []
    for name, plot, needs in wanted:
        if len(done) < needs:
            continue
        try:
            ax = plot(study)
        except (ValueError, RuntimeError):  # e.g. importances when no parameter varies
            continue
        fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
        fig.set_size_inches(8, 5)
        made.append(plots.save(fig, out_dir, name))
    plt.close("all")
    return made


def summary(study, spread: dict | None = None):
    """The study as the report reads it: plain rows, no Optuna objects (`spread`: seed
    variance, harness.seeds)."""
    from harness.report import markdown
    rows = [markdown.TrialRow(t.number, t.state.name, dict(t.params),
                            dict(t.user_attrs.get("after", {})),
                            t.user_attrs.get("mlflow_run_id", ""),
                            dict(t.user_attrs.get("times", {})))
            for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    return markdown.SweepSummary(study.study_name, next(r for r in rows if r.number == best.number),
                               best.value, rows, spread)


def summarize(recipe: Recipe, name: str) -> tuple:
    """A logged study (`harness report`), from the recipe's storage: its summary and plots."""
    import optuna

    from harness.report import markdown
    study = optuna.load_study(study_name=name, storage=stores.open_storage(
        recipe.sweep.storage or DEFAULT_STORAGE))
    return summary(study), study_plots(study, markdown.report_dir(recipe, name))


def check_parallel(recipe: Recipe, tracker) -> None:
    """Several processes need stores made for concurrency: never SQLite (Optuna's docs; MLflow
    on SQLite fails with 'database is locked')."""
    if not stores.kind(recipe.sweep.storage or DEFAULT_STORAGE).parallel:
        raise HarnessError("parallel workers need an Optuna storage safe for several processes: "
                           "--storage journal:///path/study.log on one machine, "
                           "postgresql://user@host/db across machines", key="sweep.storage")
    if tracker.uri.startswith(("sqlite", "file:")) or "://" not in tracker.uri:
        raise HarnessError("parallel workers need an MLflow tracking server or database, e.g. "
                           "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (harness server) or "
                           "postgresql://...", key="tracking.uri")


def check_gpus(recipe: Recipe, space: SweepFile, workers: int) -> None:
    """Multi-GPU trials need their GPUs: said before anything starts. (On a CPU, gloo.)"""
    ids, per = distributed.gpu_ids(), space.processes_per_trial
    if per > 1 and ids and len(ids) < workers * per:
        raise HarnessError(f"{workers} worker(s) of {per} GPUs need {workers * per} GPUs and "
                           f"this machine has {len(ids)}", file=recipe.sweep.space,
                           key="processes_per_trial")


def _spawn_workers(recipe: Recipe, tracker, parent: str, total: int, workers: int,
                   per_trial: int) -> None:
    """`workers` `harness sweep --worker-of PARENT` processes (torchrun groups of `per_trial`)."""
    import subprocess
    ids = distributed.gpu_ids()
    path = _recipe_file(recipe, parent, tracker if per_trial > 1 else None)
    procs = []
    for i in range(workers):  # on a CPU, each worker a share of the cores
        env = dict(os.environ) if ids else {
            **os.environ, "OMP_NUM_THREADS": distributed.cpu_threads(workers * per_trial)}
        if ids:  # its own GPUs where there are enough; otherwise workers share them in turn
            group = ids[i * per_trial:(i + 1) * per_trial] if len(ids) >= workers * per_trial \
                else [ids[i % len(ids)]]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(group)
        argv = ["sweep", str(path), "--n-trials", str(total), "--worker-of", f"{parent}:{i + 1}"]
        procs.append(subprocess.Popen(distributed.command(argv, per_trial), env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise TrainingFault(f"sweep workers exited with codes {codes} (their lines above say "
                            "why); the same command resumes the study", key="--workers")


def _recipe_file(recipe: Recipe, name: str, tracker=None) -> Path:
    """The recipe as a file for the processes this one starts (`harness sweep FILE`). With a
    tracker, init_from is resolved to a local folder first: an MLflow run's adapter downloaded
    here once, not by every rank of a group."""
    import yaml
    if tracker is not None:
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={
            "init_from": prepared.resolve_init(recipe, tracker)})})
    path = Path(recipe.output_dir) / recipe.name / f"sweep-recipe-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return path


def _as_group(recipe: Recipe, space: SweepFile, n_trials: int | None) -> dict:
    """Trials of several GPUs with one worker: the whole sweep (set-up, the start's scoring,
    the trials, the report) runs once in a torchrun group of processes_per_trial ranks, rank 0
    leading. Spawning the group only for the trials made its ranks import, load and prepare
    all over again after this process had (~30 s on 2 x H200, docs/benchmarks.md). This process
    only checks the recipe, waits, and returns what rank 0 wrote."""
    import json
    prepared.check(recipe)  # bad input fails here, once, not in every rank
    from harness.tracking.tracker import Tracker
    path = _recipe_file(recipe, "group", Tracker(recipe) if recipe.model.init_from else None)
    result = path.with_name(f"sweep-{os.getpid()}.json")
    per, ids = space.processes_per_trial, distributed.gpu_ids()
    say(f"sweep in a group of {per} processes, {per} a trial")
    argv = ["sweep", str(path), "--n-trials", str(n_trials or space.n_trials),
            "--group-result", str(result)]
    code = distributed.launch(argv, per, {"CUDA_VISIBLE_DEVICES": ",".join(ids[:per])}
                              if ids else None)
    if code or not result.exists():
        raise TrainingFault(f"the sweep's group of {per} processes exited with code {code} (its "
                            "lines above say why); the same command resumes the study",
                            key="processes_per_trial")
    out = json.loads(result.read_text())
    result.unlink()
    return out


def run_worker(recipe: Recipe, n_trials: int | None, parent: str, index: int) -> None:
    """One of several processes joining a study: trials only, no base scoring, no report. In a
    group of multi-GPU trials, rank 0 runs the study and the other ranks follow it."""
    _setup()
    from harness.tracking.tracker import Tracker
    space = load_space(recipe)
    if not distributed.is_main():
        return _follow(recipe, space)
    tracker = Tracker(recipe)
    prep = prepared.prepare(recipe, tracker, scorings=n_trials or space.n_trials,
                            select=True)
    saved = tracker.load_json(parent, "eval/start.json")
    if not saved or not prepared.start_matches(prep, saved):
        raise HarnessError(f"sweep run {parent!r} has no eval/start.json of these golden sets "
                           "to join", key="--worker-of")
    prepared.start_from_json(prep, saved)
    study = open_study(recipe, space, worker=index)
    _optimize(recipe, space, prep, tracker, study, parent, n_trials or space.n_trials)
    if distributed.world_size() > 1:
        distributed.share(None)  # the study is done: the other ranks stop following
        distributed.finish()


def _follow(recipe: Recipe, space: SweepFile) -> None:
    """A rank other than 0 of a multi-GPU trial: trains, in step with rank 0, each trial's
    values as rank 0 announces them, until it announces none."""
    prep = prepared.prepare(recipe, select=True)
    distributed.join()
    while (values := distributed.share()) is not None:
        callbacks = [] if space.pruner.type == "none" else [pruning_callback(
            None, space.pruner, prep, recipe.sweep.objective, recipe.sweep.direction, None)]
        try:
            run.train_alongside(prep, with_values(recipe, values), callbacks)
        except Diverged:  # rank 0 saw it too, fails the trial and goes on with the study
            pass
        # any other fault is this rank's alone: it exits, and torchrun stops the group
    distributed.finish()


def run_sweep(recipe: Recipe, n_trials: int | None = None, workers: int = 1) -> dict:
    optuna = _setup()
    from harness.report import markdown
    from harness.tracking.tracker import BEST_MODEL_TAG, KIND_TAG, STUDY_TAG, Tracker
    space = load_space(recipe)
    check_gpus(recipe, space, workers)
    group = distributed.world_size() > 1  # this process is a rank of a multi-GPU trials' group
    if group and not distributed.is_main():
        return _follow(recipe, space)
    if space.processes_per_trial > 1 and workers == 1 and not group:
        return _as_group(recipe, space, n_trials)
    tracker = Tracker(recipe)
    if workers > 1:
        check_parallel(recipe, tracker)
    total = n_trials or space.n_trials
    prep = prepared.prepare(recipe, tracker, scorings=total + 1, select=True)
    if group:
        distributed.join()
    study = open_study(recipe, space)
    optuna.storages.fail_stale_trials(study)
    retries.repair_killed_runs(study, tracker)
    retries.retry_interrupted(study)
    name = study_name(recipe)
    parent_id = sweep_run(study, tracker)
    key = recipe.sweep.objective
    tags = {**run.run_tags(recipe), STUDY_TAG: name, KIND_TAG: "sweep", "harness.objective": key}
    with tracker.run(name, run_id=parent_id, tags=None if parent_id else tags,
                     description=f"Optuna study '{name}': {key} ({recipe.sweep.direction})") \
            as parent:
        study.set_user_attr("mlflow_run_id", parent)
        if parent_id:
            say(f"resuming study {name!r} ({len(finished(study))} of {total} trials done)")
        else:
            tracker.log_params({"recipe": recipe.to_dict(), "sweep": space.model_dump(mode="json"),
                                "storage": recipe.sweep.storage or DEFAULT_STORAGE,
                                "distributed/world_size": distributed.world_size()})
            tracker.log_dict(recipe.to_dict(), "recipe.yaml")
        saved = tracker.load_json(parent, "eval/start.json")
        # a resumed study: the starting model was scored already, on these same examples
        if saved and prepared.start_matches(prep, saved):
            prepared.start_from_json(prep, saved)
        else:
            prepared.evaluate_start(prep)
            tracker.log_dict(prepared.start_to_json(prep), "eval/start.json")  # what resumes read
            from harness.eval.scoring import flat_metrics
            for side in ("before", "base"):
                tracker.log_metrics({f"{side}/{k}": v
                                     for k, v in flat_metrics(getattr(prep, side)).items()})
        # what trials' records compare with; again when a killed process left them half-logged
        if recipe.tracking.log_evaluations != "none" and tracker.needs_evaluations(parent,
                                                                                   "before"):
            run.log_evaluations(recipe, tracker, prep.before, parent, name, "before")
        if workers > 1:
            per = space.processes_per_trial
            say(f"{workers} worker(s) joining study {name!r}"
                + (f", {per} processes a trial" if per > 1 else ""))
            _spawn_workers(recipe, tracker, parent, total, workers, per)
        else:
            _optimize(recipe, space, prep, tracker, study, parent, total)
            if group:
                distributed.share(None)  # the study is done: the other ranks stop following
                distributed.finish()
        if not [t for t in finished(study) if t.state.name == "COMPLETE"]:
            errors = {t.user_attrs.get("error") for t in study.trials} - {None}
            raise TrainingFault("no trial completed" + (f" ({'; '.join(sorted(errors))})"
                                                        if errors else ""), key="sweep")
        best = study.best_trial
        tracker.log_metrics({f"best/{key}": best.value})
        # the held-out part, read by no selection, scored for the chosen trial alone
        run.score_held_out(prep, recipe, tracker, best.user_attrs.get("mlflow_run_id", ""))
        heldout = _held_out_result(recipe, tracker, best, len(finished(study)))
        if heldout:
            tracker.log_metrics({f"best_{side}/{heldout['key']}": heldout[side]
                                 for side in ("before", "after")})
            tracker.describe(heldout["line"])
        spread = _repeat_best(prep, recipe, tracker, study, best, heldout, parent) \
            if recipe.sweep.repeat_best else None
        # tags, not params: a resumed study may find a new best, and MLflow params are final
        best_model = _best_model(recipe, tracker, best, prep.goldens)
        if recipe.tracking.log_evaluations == "best":
            _best_evaluations(recipe, tracker, best, best_model)
        tracker.set_tags({"harness.best_trial": best.number,
                          "harness.best_run_id": best.user_attrs.get("mlflow_run_id", ""),
                          **({BEST_MODEL_TAG: best_model} if best_model else {}),
                          **{f"best.{k}": v for k, v in best.params.items()}})
        ctx = context.current()
        times = ctx.clock.command_times()  # for the report; time/other is logged after it
        work = ctx.ledger.totals()  # this process's: workers' trials log their own
        tracker.log_metrics({**timing.metrics({k: v for k, v in times.items() if k != "other"}),
                             **ledger.metrics(work)})
        with phase("writing the sweep report"), context.timed("report"):
            images = study_plots(study, markdown.report_dir(recipe, name))
            path = markdown.write_sweep(recipe, summary(study, spread), prep.before, tracker,
                                      images, times, work)
            tracker.log_artifacts(str(path.parent), "report")
        tracker.log_metrics(ctx.clock.closing_metrics())
        say(f"best trial {best.number}: {key} {best.value:.4g}"
            + (f"; {heldout['line']}" if heldout else "")
            + (f"; {seeds.line(spread)}" if spread else "") + f"; report: {path}")
        from harness.eval.scoring import flat_metrics
        return {"study": name, "best_trial": best.number, "best_value": best.value,
                "best_params": best.params, "parent_run_id": parent, "report": str(path),
                "before_value": flat_metrics(prep.before).get(key), "trials": len(finished(study)),
                "best_run_id": best.user_attrs.get("mlflow_run_id", ""),
                "tracking": tracker.uri, "experiment": tracker.experiment,
                "heldout": heldout}


def _repeat_best(prep, recipe: Recipe, tracker, study, best, heldout, parent) -> dict:
    """sweep.repeat_best: the best values again with more seeds (harness.seeds), logged on the
    sweep run as `seeds/` metrics and the tag harness.lead_inside_seed_noise."""
    import optuna
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
            and t.number != best.number]
    higher = recipe.sweep.direction == "maximize"
    runner_up = (max if higher else min)((t.value for t in done), default=None)
    spread = seeds.repeat_best(
        prep, recipe, tracker, {"values": best.params, "value": best.value,
                                "run_id": best.user_attrs.get("mlflow_run_id", ""),
                                "heldout": heldout["after"] if heldout else None},
        runner_up, heldout["key"] if heldout else None, study_name(recipe), parent)
    tracker.log_metrics(seeds.metrics(spread))
    if spread["inside_noise"] is not None:
        tracker.set_tags({"harness.lead_inside_seed_noise": spread["inside_noise"]})
    return spread


def _best_model(recipe: Recipe, tracker, best, goldens) -> str | None:
    """The best trial's LoggedModel id: logged with the trial under tracking.log_models `all`;
    under `best`, logged now from the trial's adapter folder (when this machine has it)."""
    from harness.tracking.tracker import MODEL_TAG
    run_id, folder = best.user_attrs.get("mlflow_run_id"), best.user_attrs.get("adapter_dir")
    view = tracker.read_run(run_id) if run_id else None
    if view is None or recipe.models_logged == "none":
        return None
    if view.tags.get(MODEL_TAG):
        return view.tags[MODEL_TAG]
    if recipe.models_logged != "best" or not folder or not Path(folder).is_dir():
        return None
    model_id = tracker.log_model(run_id, folder, view.name, run.model_kind(recipe))
    tracker.log_model_metrics(run_id, model_id, {k.removeprefix("after/"): v for k, v in
                                                 view.metrics.items() if k.startswith("after/")},
                              goldens)
    return model_id


def _best_evaluations(recipe: Recipe, tracker, best, model_id: str | None) -> None:
    """Under tracking.log_evaluations `best`: the best trial's per-example records, from the
    results it logged, once (a resumed study whose best is unchanged has them)."""
    from harness.eval.scoring import results_from_json
    run_id = best.user_attrs.get("mlflow_run_id")
    view = tracker.read_run(run_id) if run_id else None
    if view is None or not tracker.needs_evaluations(run_id, "after"):
        return
    saved = tracker.load_json(run_id, "eval/results.json")
    if saved:
        run.log_evaluations(recipe, tracker, results_from_json(saved["after"]), run_id,
                            view.name, "after", model_id)


def _held_out_result(recipe: Recipe, tracker, best, trials: int) -> dict | None:
    """The best trial's before/after on the held-out part of the objective's golden set (what
    the sweep run's headline and description give), or None without a split."""
    from harness.eval.goldensets import HELDOUT
    set_name, metric = recipe.sweep.objective.split("/", 1)
    key = f"{set_name}{HELDOUT}/{metric}"
    saved = tracker.load_json(best.user_attrs.get("mlflow_run_id", ""), "eval/results.json")
    cmp = saved["comparison"] if saved else {}
    if key not in cmp.get("after", {}):
        return None
    from harness.report.markdown import delta_line
    return {"key": key, "before": cmp["before"][key], "after": cmp["after"][key],
            "line": f"best of {trials} trials (chosen on {recipe.sweep.objective}), held out: "
                    + delta_line(cmp, key)}
