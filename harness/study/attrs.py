"""The user attributes the harness keeps on Optuna trials and studies, named once: TrialAttrs
reads what a trial holds, the functions below write it. Reports get plain values from here
(harness.study.sweep.summary), never an Optuna object."""
from __future__ import annotations

from dataclasses import dataclass, field

RUN_ID = "mlflow_run_id"  # a trial's MLflow run; on the study, the sweep's run
ADAPTER_DIR = "adapter_dir"  # where the trial saved its adapter (or model)
AFTER = "after"  # the tuned model's metrics, flat keys ('math/numeric_accuracy')
TIMES = "times"  # seconds per phase (harness.core.timing)
WORKER = "worker"  # the process running it (harness.study.storage.worker_id)
INTERRUPTED = "interrupted"  # stopped by a signal or its process died: retried once
ERROR = "error"  # why it failed
RETRY_OF = "retry_of"  # the number of the interrupted trial whose values this one runs again
SAMPLED_BY = "sampled_by"  # where its values came from (harness.study.samplers.source)


@dataclass(frozen=True)
class TrialAttrs:
    """What the harness recorded on one trial (a live optuna Trial or a FrozenTrial); a value
    not recorded (yet) is empty or None."""
    run_id: str = ""
    adapter_dir: str | None = None
    after: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    worker: str | None = None
    interrupted: bool = False
    error: str | None = None
    retry_of: int | None = None
    sampled_by: str | None = None

    @classmethod
    def of(cls, trial) -> TrialAttrs:
        a = trial.user_attrs
        return cls(a.get(RUN_ID, ""), a.get(ADAPTER_DIR), dict(a.get(AFTER, {})),
                   dict(a.get(TIMES, {})), a.get(WORKER), bool(a.get(INTERRUPTED, False)),
                   a.get(ERROR), a.get(RETRY_OF), a.get(SAMPLED_BY))


def set_run_id(trial, run_id: str) -> None:
    trial.set_user_attr(RUN_ID, run_id)


def set_outcome(trial, adapter_dir: str, after: dict[str, float], times: dict[str, float]):
    """A trial that finished: what the report and the best trial's steps read."""
    trial.set_user_attr(ADAPTER_DIR, adapter_dir)
    trial.set_user_attr(AFTER, after)
    trial.set_user_attr(TIMES, times)


def set_sampled_by(trial, source: str) -> None:
    trial.set_user_attr(SAMPLED_BY, source)


def set_worker(trial, worker: str) -> None:
    trial.set_user_attr(WORKER, worker)


def set_interrupted(trial) -> None:
    trial.set_user_attr(INTERRUPTED, True)


def set_error(trial, message: str) -> None:
    trial.set_user_attr(ERROR, message)


def retry(number: int) -> dict:
    """The user attributes of a trial enqueued to run trial `number`'s values again."""
    return {RETRY_OF: number}


def study_run_id(study) -> str | None:
    """The sweep's MLflow run the study names (None: a study from before it named one)."""
    return study.user_attrs.get(RUN_ID)


def set_study_run_id(study, run_id: str) -> None:
    study.set_user_attr(RUN_ID, run_id)
