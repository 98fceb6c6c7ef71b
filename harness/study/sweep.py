"""The Optuna study: opened on its storage, resumed, run trial by trial (one nested MLflow run
each) or by workers; Optuna's plots and the study's summary the report reads. The search itself
(space, samplers, pruners) is harness.study.search; what follows on the best trial,
harness.study.best."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from harness.train import distributed
from harness.core import context, ledger, timing
from harness.eval import objective
from harness.report import plots
from harness.pipeline import prepared, run
from harness.study import attrs, best, retries, samplers, seeds
from harness.study import storage as stores
from harness.study.attrs import TrialAttrs
from harness.study.best import HeldOut
from harness.core.errors import Diverged, HarnessError, TrainingFault, TrialPruned, phase, say
from harness.config.recipe import Recipe, SweepFile, with_values
from harness.study.search import PRUNERS, SAMPLERS, load_space, pruning_callback, trial_values

DEFAULT_STORAGE = "sqlite:///optuna.db"


def sweep_run_id(study, tracker) -> str | None:
    """The MLflow run of this study, to resume it: the one the study names, if the tracking
    store still has it. A new study (optuna.db deleted, or another storage) gets a new run,
    even where the experiment holds an old sweep run of the same name; a study started before
    the study named its run is matched by name."""
    parent = attrs.study_run_id(study)
    if parent:
        run = tracker.read_run(parent)
        if run is not None and run.experiment_id != tracker.experiment_id:
            # MLflow cannot resume a run under another experiment, and a study's trials are
            # compared within one: the user changed tracking.experiment, not the study
            raise HarnessError(
                f"study {study.study_name!r} ({len(study.trials)} trials) logs to another MLflow "
                f"experiment (sweep run {parent}); tracking.experiment is "
                f"{tracker.experiment!r}: set sweep.study_name to start a new study there, "
                "or keep the study's experiment")
        return parent if run is not None else None
    return tracker.find_sweep_run(study.study_name) if study.trials else None


def study_name(recipe: Recipe) -> str:
    return recipe.sweep.study_name or recipe.name


def sampler_seed(seed: int, worker: int, existing: int) -> int:
    """The sampler's seed for a process joining a study that holds `existing` trials (TPE, GP,
    random; a grid takes the sweep file's, harness.study.search). A sampler seeded as before replays
    its draws from the start (TPE's start-up trials are random), so a resumed study or a second
    worker would repeat finished trials' values: each start draws from a seed of its own,
    derived from the sweep file's, so reruns stay reproducible."""
    if existing == 0:
        return seed + worker
    import hashlib
    return int.from_bytes(hashlib.sha256(f"{seed}:{worker}:{existing}".encode()).digest()[:4],
                          "little")


def open_study(recipe: Recipe, space: SweepFile, worker: int = 0, n_trials: int | None = None):
    """Create or load the study, its sampler's start sized to `n_trials` (default: the sweep
    file's); a trial whose process died (on this machine: its pid is gone; elsewhere: the
    heartbeat) is failed and its parameters retried once (harness.study.storage)."""
    import optuna
    url = recipe.sweep.storage or DEFAULT_STORAGE
    storage = stores.open_storage(url, space)
    study = optuna.create_study(study_name=study_name(recipe), storage=storage,
                                pruner=PRUNERS.get(space.pruner.type, key="pruner.type")(
                                    space.pruner),
                                direction=objective.direction(recipe), load_if_exists=True)
    seed = sampler_seed(space.seed, worker, len(study.get_trials(deepcopy=False)))
    study.sampler = SAMPLERS.get(space.sampler, key="sampler")(
        space.model_copy(update={"n_trials": n_trials or space.n_trials}), seed)
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

    from harness.tracking.reader import SAMPLED_BY_TAG, STUDY_TAG
    name, key, way = study_name(recipe), recipe.sweep.objective, objective.direction(recipe)

    def run_trial(trial):
        attrs.set_worker(trial, stores.worker_id())
        values = trial_values(space, trial)
        again = retries.retried(study.get_trials(deepcopy=False)[trial.number])
        sampled_by = f"values of trial {again} again" if again is not None else \
            samplers.source(study.sampler, trial.number)
        attrs.set_sampled_by(trial, sampled_by)
        shown = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else
                          f"{k.split('.')[-1]}={v}" for k, v in values.items())
        done = [t for t in finished(study) if t.value is not None and t.state.name == "COMPLETE"]
        so_far = (max if way == "maximize" else min)(
            (t.value for t in done), default=None)
        say(f"trial {trial.number} ({len(finished(study)) + 1}/{total}): {shown}"
            + (f"; best so far {key} {so_far:.4g}" if so_far is not None else ""))
        callbacks = [] if space.pruner.type == "none" else [
            pruning_callback(trial, space.pruner, prep, key, way, tracker)]
        variant, killed = with_values(recipe, values), retries.retried_runs(study, trial)
        # stopped after its run finished (logging its records): what it logged is the outcome
        outcome = run.recover(prep, variant, tracker, killed[0]) if killed else None
        if outcome:
            say(f"trial {trial.number}: run {outcome.run_id} of its values had finished; its "
                "results kept, no training again")
            attrs.set_run_id(trial, outcome.run_id)
        elif distributed.world_size() > 1:  # the trial's other processes train these values
            distributed.share(values)
        try:
            outcome = outcome or run.run_one(
                prep, variant, tracker, f"trial-{trial.number}",
                nested=True, tags={STUDY_TAG: name, "harness.trial": trial.number,
                                   SAMPLED_BY_TAG: sampled_by, "mlflow.parentRunId": parent},
                callbacks=callbacks, resume=retries.resume_point(recipe, killed),
                on_start=lambda run_id: attrs.set_run_id(trial, run_id))
        except TrialPruned as e:
            say(f"trial {trial.number}: {e}")
            raise optuna.TrialPruned(str(e)) from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the next start retries these values
            attrs.set_interrupted(trial)
            raise
        except TrainingFault as e:
            say(f"trial {trial.number} failed: {e}")
            attrs.set_error(trial, str(e))
            raise
        value = outcome.objective(key)
        # the trial's after/ values, the objective among them where no golden set gives it
        attrs.set_outcome(trial, outcome.adapter_dir,
                          {**outcome.comparison.after_values(), key: value}, outcome.times)
        say(f"trial {trial.number}: {key} {value:.4g}" + (
            f" (base {outcome.comparison[key].before:.4g})" if key in outcome.comparison else ""))
        if math.isnan(value):
            raise HarnessError(f"objective {key} is NaN", key="sweep.objective")
        return value
    return run_trial


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
    variance, harness.study.seeds)."""
    from harness.report import markdown
    trials = study.get_trials(deepcopy=False)
    rows = [markdown.TrialRow(t.number, t.state.name, dict(t.params), a.after, a.run_id, a.times)
            for t in trials for a in [TrialAttrs.of(t)]]
    chosen = study.best_trial
    return markdown.SweepSummary(study.study_name,
                                 next(r for r in rows if r.number == chosen.number),
                                 chosen.value, rows, spread, samplers.describe(
                                     [(t.number, TrialAttrs.of(t).sampled_by) for t in trials]))


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


def _as_group(recipe: Recipe, space: SweepFile, n_trials: int | None) -> SweepResult:
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
    out = SweepResult.from_json(json.loads(result.read_text()))
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
    study = open_study(recipe, space, worker=index, n_trials=n_trials)
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
            None, space.pruner, prep, recipe.sweep.objective, objective.direction(recipe), None)]
        try:
            run.train_alongside(prep, with_values(recipe, values), callbacks)
        except Diverged:  # rank 0 saw it too, fails the trial and goes on with the study
            pass
        # any other fault is this rank's alone: it exits, and torchrun stops the group
    distributed.finish()


@dataclass(frozen=True)
class SweepResult:
    """What a sweep ran to and where it left it: the study, its best trial, the runs, the
    report (what `harness sweep` prints; a group's rank 0 hands it over as JSON)."""
    study: str
    trials: int  # finished: complete or pruned
    best_trial: int
    best_value: float
    best_params: dict
    best_run_id: str
    before_value: float | None  # the objective's value before training
    parent_run_id: str  # the sweep's own MLflow run
    report: str
    tracking: str  # the tracking store's URI
    experiment: str
    heldout: HeldOut | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SweepResult:
        return cls(**{**d, "heldout": HeldOut(**d["heldout"]) if d.get("heldout") else None})


def run_sweep(recipe: Recipe, n_trials: int | None = None,
              workers: int = 1) -> SweepResult | None:
    """The sweep: the start scored once, the trials (here, by `workers` processes, or in a
    torchrun group), then the best trial's steps and the report, all under one MLflow run.
    None on a rank other than 0 of a group."""
    optuna = _setup()
    from harness.tracking.reader import KIND_TAG, STUDY_TAG
    from harness.tracking.tracker import Tracker
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
    study = open_study(recipe, space, n_trials=total)
    optuna.storages.fail_stale_trials(study)
    retries.repair_killed_runs(study, tracker)
    retries.retry_interrupted(study)
    name, key = study_name(recipe), recipe.sweep.objective
    parent_id = sweep_run_id(study, tracker)
    tags = {**run.run_tags(recipe), STUDY_TAG: name, KIND_TAG: "sweep", "harness.objective": key}
    with tracker.run(name, run_id=parent_id, tags=None if parent_id else tags,
                     description=f"Optuna study '{name}': {key} ({objective.direction(recipe)})") \
            as parent:
        attrs.set_study_run_id(study, parent)
        if parent_id:
            say(f"resuming study {name!r} ({len(finished(study))} of {total} trials done)")
        else:
            tracker.log_params({"recipe": run.recipe_params(recipe),
                                "sweep": space.model_dump(mode="json"),
                                "storage": recipe.sweep.storage or DEFAULT_STORAGE,
                                "distributed/world_size": distributed.world_size()})
            tracker.log_dict(recipe.to_dict(), "recipe.yaml")
        # records written beside the trials' training steps on a GPU (harness.core.beside);
        # with worker processes training, this one has nothing to overlap
        beside = prep.plan.records_beside and workers == 1
        with context.current().beside.trials() if beside else contextlib.nullcontext():
            _score_start(recipe, tracker, prep, parent)
            for t in finished(study):  # a killed process's trials whose records it did not write
                if t.state.name == "COMPLETE" and TrialAttrs.of(t).run_id:
                    run.records_again(recipe, tracker, TrialAttrs.of(t).run_id)
            _run_trials(recipe, space, prep, tracker, study, parent, total, workers, group)
        context.wait_beside()  # every trial's records written before the chosen one's are read
        heldout, spread = best.conclude(prep, recipe, tracker, study, name, parent,
                                        len(finished(study)))
        path = _report(recipe, tracker, study, prep, spread)
        chosen = study.best_trial
        say(f"best trial {chosen.number}: {key} {chosen.value:.4g}"
            + (f"; {heldout.line}" if heldout else "")
            + (f"; {seeds.line(spread)}" if spread else "") + f"; report: {path}")
        from harness.eval.scoring import flat_metrics
        return SweepResult(name, len(finished(study)), chosen.number, chosen.value,
                           chosen.params, TrialAttrs.of(chosen).run_id,
                           flat_metrics(prep.before).get(key), parent, str(path), tracker.uri,
                           tracker.experiment, heldout)


def _score_start(recipe: Recipe, tracker, prep, parent: str) -> None:
    """The starting model's scores: read back from the sweep run where a resumed study scored
    the same examples already, else scored and logged there (eval/start.json, what resumes and
    workers read); and its evaluation records, which trials' records compare with."""
    saved = tracker.load_json(parent, "eval/start.json")
    if saved and prepared.start_matches(prep, saved):
        prepared.start_from_json(prep, saved)
    else:
        prepared.evaluate_start(prep)
        tracker.log_dict(prepared.start_to_json(prep), "eval/start.json")
        from harness.eval.scoring import flat_metrics
        for side in ("before", "base"):
            tracker.log_metrics({f"{side}/{k}": v
                                 for k, v in flat_metrics(getattr(prep, side)).items()})
    # again when a killed process left them half-logged
    if recipe.tracking.log_evaluations != "none" and tracker.needs_evaluations(parent, "before"):
        run.write_evaluations(recipe, tracker, prep.before, parent, study_name(recipe), "before")


def _run_trials(recipe: Recipe, space: SweepFile, prep, tracker, study, parent: str, total: int,
                workers: int, group: bool) -> None:
    """The study's trials up to `total`: here, or by `workers` worker processes. Fails when
    none completed."""
    if workers > 1:
        per = space.processes_per_trial
        say(f"{workers} worker(s) joining study {study.study_name!r}"
            + (f", {per} processes a trial" if per > 1 else ""))
        _spawn_workers(recipe, tracker, parent, total, workers, per)
    else:
        _optimize(recipe, space, prep, tracker, study, parent, total)
        if group:
            distributed.share(None)  # the study is done: the other ranks stop following
            distributed.finish()
    if not [t for t in finished(study) if t.state.name == "COMPLETE"]:
        errors = {TrialAttrs.of(t).error for t in study.trials} - {None}
        raise TrainingFault("no trial completed" + (f" ({'; '.join(sorted(errors))})"
                                                    if errors else ""), key="sweep")


def _report(recipe: Recipe, tracker, study, prep, spread: dict | None) -> Path:
    """The sweep run's time/ and work/ metrics, then its report with Optuna's plots, logged."""
    from harness.report import markdown
    ctx = context.current()
    times = ctx.clock.command_times()  # for the report; time/other is logged after it
    work = ctx.ledger.totals()  # this process's: workers' trials log their own
    tracker.log_metrics({**timing.metrics({k: v for k, v in times.items() if k != "other"}),
                         **ledger.metrics(work)})
    from harness.tracking.reader import SAMPLING_TAG
    with phase("writing the sweep report"), context.timed("report"):
        images = study_plots(study, markdown.report_dir(recipe, study.study_name))
        summarized = summary(study, spread)
        tracker.set_tags({SAMPLING_TAG: summarized.sampling})
        path = markdown.write_sweep(recipe, summarized, prep.before, tracker,
                                    images, {**times, **ctx.clock.beside_times()}, work,
                                    machine=prep.plan.machine())
        tracker.log_artifacts(str(path.parent), "report")
    tracker.log_metrics(ctx.clock.closing_metrics())
    return path
