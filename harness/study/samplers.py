"""Sampler building blocks the sweep's samplers use: a start sized to the trial budget, a start
of one sampler handing over to a model of another, and the line naming which trials came from
where (the report's and the sweep run's)."""
from __future__ import annotations

from collections.abc import Sequence

FLOOR = 4  # a model fitted on fewer points did worse than random draws (bench/sampler_start.py)
CAP = 10  # Optuna's own start (TPESampler, GPSampler), kept for budgets of 20 trials and more
RANDOM_FALLBACK = "drawn at random (too few finished trials for the model yet)"


def start_size(n_trials: int) -> int:
    """Random trials before the model takes over: half the budget, at least 4 (all of a smaller
    one), at most Optuna's 10. Optuna's TPESampler and GPSampler start with 10, more than any
    shipped sweep runs (3-8): the whole sweep was their random start. A shorter start (a third,
    at least 1) left the model fitting one or two noisy points, and it did worse than random at
    3 and 6 trials (docs/benchmarks.md)."""
    return min(n_trials, max(FLOOR, min(CAP, n_trials // 2)))


def model_seed(seed: int) -> int:
    """The model's seed, apart from the start's `seed` (a hash of it: seed + 1 is the next
    worker's, harness.study.sweep.sampler_seed)."""
    import hashlib
    return int.from_bytes(hashlib.sha256(f"model:{seed}".encode()).digest()[:4], "little")


def start_then_model(first, model, start: int, first_name: str, model_name: str,
                     counted: tuple[str, ...] = ("COMPLETE", "PRUNED")):
    """An Optuna sampler: the study's trials numbered below `start` from `first`, the rest from
    `model`, whose own start-up count is `start` too: it draws at random while fewer than
    `start` trials in the states it `counted` have finished (failed ones, parallel workers;
    TPE counts complete and pruned trials, GP complete ones). Each trial's source is recorded
    as it is sampled (`source(number)`). Made in a function, as optuna is imported only where a
    sweep runs."""
    import optuna

    class StartThenModel(optuna.samplers.BaseSampler):
        def __init__(self):
            self.first, self.model, self.start = first, model, start
            self._sources: dict[int, str] = {}

        def _for(self, trial):
            return self.first if trial.number < self.start else self.model

        def source(self, number: int) -> str | None:
            """What sampled trial `number` in this process (None: not this process's)."""
            return self._sources.get(number)

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name,
                                                       param_distribution)

        def before_trial(self, study, trial) -> None:
            if trial.number < self.start:
                self._sources[trial.number] = f"from a {first_name} start"
            else:
                states = tuple(optuna.trial.TrialState[name] for name in counted)
                ready = len(study.get_trials(deepcopy=False, states=states)) >= start
                self._sources[trial.number] = f"from {model_name}'s model" if ready \
                    else RANDOM_FALLBACK
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values: Sequence[float] | None) -> None:
            self._for(trial).after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.first.reseed_rng()
            self.model.reseed_rng()

    return StartThenModel()


def source(sampler, number: int) -> str:
    """Where the sampler in this process took trial `number`'s values from, as the report words
    it: a start-then-model sampler recorded it; a grid's come from the grid; the rest are
    random draws."""
    import optuna
    recorded = getattr(sampler, "source", None)
    if recorded is not None and recorded(number):
        return recorded(number)
    if isinstance(sampler, optuna.samplers.GridSampler):
        return "from the grid"
    return "drawn at random"


def describe(sources: list[tuple[int, str | None]]) -> str:
    """The trials grouped by where their values came from, in trial order: 'trials 0-3 from a
    random start, 4-5 from GP's model' (the report's line and the sweep run's tag)."""
    groups: dict[str, list[int]] = {}
    for number, src in sorted(sources):
        groups.setdefault(src or "not recorded (started before the harness recorded it)",
                          []).append(number)
    parts = [f"{_ranges(numbers)} {src}" for src, numbers in groups.items()]
    return ("trial " if len(sources) == 1 else "trials ") + ", ".join(parts) if parts else ""


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2 and 5'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    texts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]
