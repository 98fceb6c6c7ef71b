"""harness.study.search's samplers on real Optuna studies (SQLite), opened as a sweep opens them:
the default's start fits the trial budget, then its model samples; the names users write."""
import pytest

from harness.config import recipe
from harness.core.errors import HarnessError
from harness.study import samplers, search, sweep


def _space(tmp_path, recipe_dict, text: str):
    path = tmp_path / "search.yaml"
    path.write_text(text + "params:\n"
                    "  trainer.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
                    "  adapter.r: {type: categorical, choices: [4, 8, 16]}\n")
    d = dict(recipe_dict, sweep=dict(recipe_dict["sweep"], space=str(path)))
    r = recipe.build(d, str(tmp_path / "recipe.yaml"))
    return r, recipe.load_sweep_file(path, r)


def _run(study, space, n: int, fail: int | None = None) -> list[str]:
    """n trials of a peaked objective, as the sweep's objective asks and records them; trial
    `fail` fails."""
    import math

    def objective(trial):
        values = search.trial_values(space, trial)
        trial.set_user_attr("source", samplers.source(study.sampler, trial.number))
        if trial.number == fail:
            raise RuntimeError("out of memory")
        return -(math.log10(values["trainer.learning_rate"]) + 3.5) ** 2
    study.optimize(objective, n_trials=n, catch=(RuntimeError,))
    return [t.user_attrs["source"] for t in study.trials]


@pytest.mark.parametrize("n_trials", [3, 6, 12])
def test_the_default_samplers_start_fits_the_budget_then_its_model_samples(
        recipe_dict, tmp_path, n_trials):
    r, space = _space(tmp_path, recipe_dict, f"n_trials: {n_trials}\n")
    default = recipe.SweepFile.model_fields["sampler"].default
    assert space.sampler == default
    study = sweep.open_study(r, space)
    start = samplers.start_size(n_trials)
    assert start < n_trials or n_trials < 4  # the sweep reaches the model
    model = {"gp": "GP", "tpe": "TPE"}[default]
    assert _run(study, space, n_trials) == \
        ["from a random start"] * start + [f"from {model}'s model"] * (n_trials - start)


def test_the_start_fits_the_budget_the_command_line_gives(recipe_dict, tmp_path):
    """--n-trials overrides the sweep file's n_trials, and the start follows it."""
    r, space = _space(tmp_path, recipe_dict, "n_trials: 3\nsampler: tpe\n")
    study = sweep.open_study(r, space, n_trials=12)
    start = samplers.start_size(12)
    assert start > samplers.start_size(3)
    assert _run(study, space, 12) == \
        ["from a random start"] * start + ["from TPE's model"] * (12 - start)


def test_a_second_worker_draws_other_values_and_the_start_counts_the_studys_trials(
        recipe_dict, tmp_path):
    """Workers seed their samplers apart (sweep.sampler_seed): a second process joining the
    study draws values of its own, and the start is the study's first trials, not each
    worker's."""
    r, space = _space(tmp_path, recipe_dict, "n_trials: 6\nsampler: tpe\n")
    first = sweep.open_study(r, space, worker=1)
    one = _run(first, space, 2)
    second = sweep.open_study(r, space, worker=2)
    two = _run(second, space, 4)[2:]
    trials = second.trials
    assert len({t.params["trainer.learning_rate"] for t in trials}) == 6
    start = samplers.start_size(6)
    assert one + two == ["from a random start"] * start + ["from TPE's model"] * (6 - start)


@pytest.mark.parametrize("sampler, model", [("gp", "GP"), ("tpe", "TPE")])
def test_a_failed_start_trial_leaves_random_draws_that_repeat_no_values(
        recipe_dict, tmp_path, sampler, model):
    """Trial 0 fails: at trial 4 the model has 3 of its 4 start-up trials and draws at random
    (the report says so), from a stream of its own, not the start's again."""
    r, space = _space(tmp_path, recipe_dict, f"n_trials: 6\nsampler: {sampler}\n")
    study = sweep.open_study(r, space)
    assert _run(study, space, 6, fail=0) == ["from a random start"] * 4 + [
        samplers.RANDOM_FALLBACK, f"from {model}'s model"]
    assert len({t.params["trainer.learning_rate"] for t in study.trials}) == 6


def test_an_unknown_sampler_name_says_what_was_meant():
    with pytest.raises(HarnessError, match=r"unknown sampler 'gpp'; did you mean gp\?"):
        search.SAMPLERS.get("gpp", key="sampler")
    assert {"gp", "tpe", "random", "grid"} <= set(search.SAMPLERS)
    assert set(search.SAMPLERS) == set(
        recipe.SweepFile.model_fields["sampler"].annotation.__args__)
