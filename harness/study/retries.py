"""A sweep's interrupted trials: their values queued again (once), the MLflow runs of the
trials a retry stands for, the last whole checkpoint among them to train on from
(harness.train.checkpoints), and the runs a dead process left RUNNING ended KILLED."""
from __future__ import annotations

from pathlib import Path

from harness.train import checkpoints, distributed
from harness.config.recipe import Recipe
from harness.study.attrs import TrialAttrs, retry


def retry_interrupted(study) -> None:
    """Queue again, once, the parameters of trials stopped by Ctrl-C or SIGTERM, or whose
    process is gone (harness.storage.fail_orphans); a trial of a process that died on another
    machine is retried by the heartbeat's callback instead."""
    import optuna
    trials = study.get_trials(deepcopy=False)
    retried = {TrialAttrs.of(t).retry_of for t in trials}
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and TrialAttrs.of(t).interrupted \
                and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs=retry(t.number))


def retried_runs(study, trial) -> list[str]:
    """The MLflow runs of the killed trials this one retries, the last first: the trial it
    retries (ours, retry_interrupted, or Optuna's heartbeat callback), the one
    that one retried, and so on."""
    trials = study.get_trials(deepcopy=False)
    runs, number = [], retried(trials[trial.number])
    while number is not None:
        if TrialAttrs.of(trials[number]).run_id:
            runs.append(TrialAttrs.of(trials[number]).run_id)
        number = retried(trials[number])
    return runs


def retried(trial) -> int | None:
    """The trial whose values this one (a FrozenTrial) runs again: ours (retry_interrupted) or
    Optuna's heartbeat callback's; None for a trial the sampler drew."""
    from optuna.storages import RetryFailedTrialCallback
    ours = TrialAttrs.of(trial).retry_of
    return ours if ours is not None else RetryFailedTrialCallback.retried_trial_number(trial)


def resume_point(recipe: Recipe, runs: list[str]) -> tuple[str, str] | None:
    """(run, checkpoint): the last whole checkpoint among the killed runs (the first one that
    saved: a retry may have been killed before it saved), if any."""
    if distributed.world_size() > 1:  # ranks would each need it; they start from step 0
        return None
    for run_id in runs:
        found = checkpoints.last(Path(recipe.output_dir) / recipe.name / run_id)
        if found:
            return run_id, found
    return None


def repair_killed_runs(study, tracker) -> None:
    """Trials whose process died were failed (their pid is gone, or Optuna's heartbeat); end
    their MLflow runs KILLED too, so none stays RUNNING."""
    import optuna
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        run_id = TrialAttrs.of(t).run_id
        if run_id:
            tracker.end_if_running(run_id, "KILLED", {"harness.trial_state": "FAIL"})
            tracker.end_running_evaluations(run_id)  # killed while logging its records
