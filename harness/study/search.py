"""The search a sweep runs: the sweep file's parameters as Optuna suggestions, its samplers and
pruners (registries), and the callback through which a pruner stops a trial's training."""
from __future__ import annotations

from harness.eval import objective
from harness.train import distributed
from harness.pipeline import prepared
from harness.core.errors import HarnessError
from harness.config.recipe import ParamSpace, PrunerSpec, Recipe, SweepFile, load_sweep_file, with_values
from harness.core.registry import Registry
from harness.study import samplers

SAMPLERS: Registry = Registry("sampler")
# Each maker gets the sweep file, its n_trials the study's budget (--n-trials wins), and this
# process's seed (harness.study.sweep.sampler_seed); a grid takes the sweep file's own.


def _after_start(space: SweepFile, seed: int, model, name: str, counted: tuple[str, ...]):
    """`model` (seeded, its start-up count set to the start) after a random start sized to
    the budget (harness.study.samplers.start_size); `counted`: the trial states it learns from."""
    import optuna
    start = samplers.start_size(space.n_trials)
    # the model's own random draws (while too few trials finished) from a stream of their own:
    # seeded alike, they would replay the start's first values
    return samplers.start_then_model(
        optuna.samplers.RandomSampler(seed=seed),
        model(seed=samplers.model_seed(seed), n_startup_trials=start), start, "random", name,
        counted)


@SAMPLERS.register("gp")
def _gp(space: SweepFile, seed: int):
    """The default: a Gaussian process on the finished trials (Optuna's GPSampler, torch and
    scipy), ahead of TPE and random search at 12 trials (bench/sampler_start.py)."""
    import optuna
    return _after_start(space, seed, optuna.samplers.GPSampler, "GP", ("COMPLETE",))


@SAMPLERS.register("tpe")
def _tpe(space: SweepFile, seed: int):
    import optuna
    return _after_start(space, seed, optuna.samplers.TPESampler, "TPE", ("COMPLETE", "PRUNED"))


@SAMPLERS.register("random")
def _random(space: SweepFile, seed: int):
    import optuna
    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("grid")
def _grid(space: SweepFile, seed: int):
    """Optuna's GridSampler gives trial N the N-th point of the grid it shuffled with its seed:
    every process on the study must shuffle alike, or two of them run one point twice, so the
    grid takes the sweep file's seed, not this process's."""
    import optuna
    grid = {}
    for key, p in space.params.items():
        if p.type != "categorical":
            raise HarnessError("grid sampling needs categorical choices", key=f"params.{key}")
        grid[key] = p.choices

    class Grid(optuna.samplers.GridSampler):
        """Optuna's grid, and the retries of interrupted points (harness.study.sweep enqueues their
        values). GridSampler.after_trial stops the study once every point has a finished
        trial, and a failed one counts: with retries still waiting in the queue, it stopped
        before them. And an enqueued trial gets no grid id, which after_trial looked up
        (KeyError) when one point was left. Here the study goes on while a retry waits, and a
        retry ends it as the grid's own trials do."""

        def after_trial(self, study, trial, state, values):
            waiting = study.get_trials(deepcopy=False,
                                       states=(optuna.trial.TrialState.WAITING,))
            if waiting:
                return
            if "grid_id" in trial.system_attrs:
                super().after_trial(study, trial, state, values)
            elif self.is_exhausted(study):
                study.stop()
    return Grid(grid, seed=space.seed)


PRUNERS: Registry = Registry("pruner")


@PRUNERS.register("none")
def _no_pruner(spec: PrunerSpec):
    import optuna
    return optuna.pruners.NopPruner()


@PRUNERS.register("median")
def _median(spec: PrunerSpec):
    import optuna
    return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials,
                                       n_warmup_steps=spec.n_warmup_steps)


@PRUNERS.register("hyperband")
def _hyperband(spec: PrunerSpec):
    import optuna
    return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource,
                                          reduction_factor=spec.reduction_factor)


@PRUNERS.register("successive_halving")
def _sha(spec: PrunerSpec):
    import optuna
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_resource,
                                                  reduction_factor=spec.reduction_factor)


def pruning_callback(trial, spec: PrunerSpec, prep, key: str, direction: str, tracker):
    """A TrainerCallback that reports the intermediate objective to the trial every
    `spec.every_steps` steps (or at each evaluation, for eval_loss) and stops training when the
    pruner says so. eval_loss is negated for a maximized objective, so 'better' agrees. In a
    multi-GPU trial, rank 0 (trial set) decides and the other ranks (trial None) stop with it."""
    from transformers import TrainerCallback

    class Pruning(TrainerCallback):
        pruned = False

        def __init__(self):
            self.reported: set[int] = set()

        def _report(self, value, step: int, control) -> None:
            # the evaluation after training comes at the last step again: Optuna keeps the
            # first value of a step and warns about the second
            if step in self.reported:
                return
            self.reported.add(step)
            if trial is not None:
                trial.report(value, step)
                tracker.log_metrics({"intermediate/value": value}, step=step)
                self.pruned = trial.should_prune()
            if distributed.world_size() > 1:
                self.pruned = distributed.share(self.pruned)
            if self.pruned:
                control.should_training_stop = True

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if spec.intermediate == "objective" and state.global_step % spec.every_steps == 0:
                value = prepared.slice_score(prep, model, key, spec.examples) if trial else None
                self._report(value, state.global_step, control)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if spec.intermediate == "eval_loss" and metrics and "eval_loss" in metrics:
                sign = -1.0 if direction == "maximize" else 1.0
                self._report(sign * metrics["eval_loss"], state.global_step, control)

    return Pruning()


def suggest(trial, key: str, p: ParamSpace):
    if p.type == "float":
        return trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
    if p.type == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return trial.suggest_categorical(key, p.choices)


def load_space(recipe: Recipe) -> SweepFile:
    if not recipe.sweep.space:
        raise HarnessError("a sweep needs a sweep file", file=recipe.source, key="sweep.space")
    from harness.train import trainers
    if recipe.sweep.objective == objective.EVAL_LOSS:  # said as the objective's, not the pruner's
        objective.check(recipe, [])
    space = load_sweep_file(recipe.sweep.space, recipe)
    probe = with_values(recipe, {k: p.choices[0] if p.choices else p.low
                                 for k, p in space.params.items()})
    try:
        trainers.check_trainer_fields(probe)
    except HarnessError as e:
        raise HarnessError(e.message, file=recipe.sweep.space) from None
    if recipe.sweep.objective == objective.EVAL_LOSS and space.pruner.intermediate == "objective":
        # the objective is the trainer's eval loss: the pruner watches it at each evaluation
        space = space.model_copy(update={"pruner": space.pruner.model_copy(
            update={"intermediate": "eval_loss"})})
    if space.pruner.type != "none" and space.pruner.intermediate == "eval_loss" \
            and not recipe.data.eval_rows:
        raise HarnessError("eval_loss needs held-out rows: set data.eval_rows in the recipe",
                           file=recipe.sweep.space, key="pruner.intermediate")
    return space


def trial_values(space: SweepFile, trial) -> dict:
    """The trial's suggested recipe values, plus what the pruner needs from the trainer."""
    values = {k: suggest(trial, k, p) for k, p in space.params.items()}
    if space.pruner.type != "none" and space.pruner.intermediate == "eval_loss":
        values.update({"trainer.eval_strategy": "steps",
                       "trainer.eval_steps": space.pruner.every_steps})
    return values
