"""harness.study.samplers on real Optuna studies: the start sized to the budget, a start handing
over to a model, and the line saying which trials came from where."""
import pytest

from harness.study import samplers


def _peak(trial) -> float:
    """A deterministic objective peaked at x = 0.3: a model finds it, random draws do not."""
    x = trial.suggest_float("x", 0.0, 1.0)
    return -(x - 0.3) ** 2


def test_the_start_is_half_the_budget_at_least_4_at_most_10():
    """The start bench/sampler_start.py chose: all of a 3-trial sweep (a model on fewer than 4
    noisy points did worse than random), half of a longer one, never more than Optuna's 10."""
    starts = {n: samplers.start_size(n) for n in (1, 3, 4, 5, 6, 8, 12, 20, 30)}
    assert starts == {1: 1, 3: 3, 4: 4, 5: 4, 6: 4, 8: 4, 12: 6, 20: 10, 30: 10}


def test_the_start_samples_first_then_the_model_and_each_trial_says_which():
    """The start's trials are exactly the start sampler's draws (a random sampler of the same
    seed alone draws them too); after it, the model's differ from further random draws and close
    in on the peak; each trial's source is what sampled it."""
    import optuna
    n, start = 12, 4
    study = optuna.create_study(direction="maximize", sampler=samplers.start_then_model(
        optuna.samplers.RandomSampler(seed=3),
        optuna.samplers.GPSampler(seed=3, n_startup_trials=start), start, "random", "GP"))
    study.optimize(_peak, n_trials=n)
    alone = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=3))
    alone.optimize(_peak, n_trials=n)
    xs = [t.params["x"] for t in study.trials]
    randoms = [t.params["x"] for t in alone.trials]
    assert xs[:start] == randoms[:start]
    assert all(a != b for a, b in zip(xs[start:], randoms[start:]))
    near = sum(abs(x - 0.3) for x in xs[start:]) / (n - start)
    far = sum(abs(x - 0.3) for x in randoms[start:]) / (n - start)
    assert near < far / 2, (near, far)
    sources = [samplers.source(study.sampler, t.number) for t in study.trials]
    assert sources == ["from a random start"] * start + ["from GP's model"] * (n - start)
    assert samplers.describe(list(enumerate(sources))) == \
        "trials 0-3 from a random start, 4-11 from GP's model"


def test_the_model_draws_at_random_while_too_few_start_trials_finished():
    """A start trial that failed leaves the model without its start-up count: the next trial is
    a random draw, and says so."""
    import optuna
    study = optuna.create_study(sampler=samplers.start_then_model(
        optuna.samplers.RandomSampler(seed=0),
        optuna.samplers.TPESampler(seed=0, n_startup_trials=2), 2, "random", "TPE"))

    def fails_first(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:
            raise RuntimeError("out of memory")
        return x
    study.optimize(fails_first, n_trials=4, catch=(RuntimeError,))
    assert [samplers.source(study.sampler, t.number) for t in study.trials] == [
        "from a random start", "from a random start", samplers.RANDOM_FALLBACK,
        "from TPE's model"]


def test_plain_samplers_name_their_draws():
    import optuna
    grid = optuna.samplers.GridSampler({"x": [0.0, 1.0]}, seed=0)
    assert samplers.source(grid, 0) == "from the grid"
    assert samplers.source(optuna.samplers.RandomSampler(seed=0), 5) == "drawn at random"


@pytest.mark.parametrize("sources, line", [
    ([(0, "a")], "trial 0 a"),
    ([(0, "a"), (1, "a"), (2, "b"), (3, "a"), (5, "b")], "trials 0-1 and 3 a, 2 and 5 b"),
    ([(1, None), (0, None)], "trials 0-1 not recorded (started before the harness recorded "
                             "it)"),
    ([], ""),
])
def test_the_line_groups_trials_by_where_their_values_came_from(sources, line):
    assert samplers.describe(sources) == line
