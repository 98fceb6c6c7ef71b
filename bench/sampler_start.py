"""Which sampler start fits a sweep's budget: Optuna samplers on a synthetic objective of this
project's search shape, many seeds, regret after 3, 6 and 12 trials.

The shipped sweeps run 3 to 8 trials, and TPESampler draws its first 10 (n_startup_trials=10) at
random: "tpe" as it shipped until 2026-12-07 was random search. This script runs each candidate
start on the same objective and noise and prints, per budget, the mean regret of the trial the
sweep would pick (the best *observed* value; regret on the true, noise-free value), the share of
seeds whose pick is within 5% of the optimum, the sampler's own milliseconds per trial, and each
candidate's regret less random search's, paired over the same seeds and noise.

The objective: log-uniform learning rate 1e-5..1e-3, epochs 1..3, LoRA rank {8, 16, 32} (the
spaces of sweeps/*.yaml). The true accuracy is a peak in log10(lr) (0.35 decades wide) whose
centre moves down 0.45 decades an epoch (more epochs want a smaller rate: the interaction) and
whose height grows a little with epochs and rank; observed = Binomial(85, true) / 85, the
sampling noise of an accuracy on the 85 examples the shipped math sweep selects on.

    OMP_NUM_THREADS=1 python bench/sampler_start.py --seeds 200   # all (~25 min, 2-core VM)
    python bench/sampler_start.py --seeds 20 --only 'tpe (shipped);tpe, start n/3'
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

LR = (1e-5, 1e-3)
EPOCHS = (1, 2, 3)
RANKS = (8, 16, 32)
EXAMPLES = 85  # sweeps/sft_math.yaml selects on half of the 170-example math golden set
BUDGETS = (3, 6, 12)


def true_accuracy(lr: float, epochs: int, r: int) -> float:
    centre = math.log10(3e-4) - 0.45 * (epochs - 1)
    height = (1.0, 1.08, 1.12)[epochs - 1] * (1.0 + 0.02 * math.log2(r / 16))
    peak = math.exp(-((math.log10(lr) - centre) ** 2) / (2 * 0.35 ** 2))
    return 0.05 + 0.25 * height * peak


def optimum() -> float:
    grid = np.logspace(math.log10(LR[0]), math.log10(LR[1]), 4001)
    return max(true_accuracy(lr, e, r) for lr in grid for e in EPOCHS for r in RANKS)


def candidates(n_trials: int, seed: int) -> dict:
    """name -> a fresh sampler for a study of `n_trials` trials."""
    import optuna

    from harness.config.recipe import SweepFile
    from harness.study import samplers, search
    k = max(1, n_trials // 3)
    tpe, gp = optuna.samplers.TPESampler, optuna.samplers.GPSampler

    def sobol():  # scrambled: unscrambled (Optuna's default) starts at the space's corner
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                          warn_independent_sampling=False)
    # TPE is multivariate in Optuna 5 (its `multivariate` argument is unused): no such variant
    half = max(1, n_trials // 2)
    four = max(min(n_trials, 4), n_trials // 2)  # at least 4 (all of a smaller budget), or half
    return {
        "tpe (shipped)": lambda: tpe(seed=seed),  # n_startup_trials=10
        "tpe, start n/3": lambda: tpe(seed=seed, n_startup_trials=k),
        "tpe, start n/2": lambda: tpe(seed=seed, n_startup_trials=half),
        "tpe, start max(4, n/2)": lambda: tpe(seed=seed, n_startup_trials=four),
        "sobol n/3, tpe": lambda: samplers.start_then_model(
            sobol(), tpe(seed=seed, n_startup_trials=k), k, "Sobol", "TPE"),
        "gp, start n/3": lambda: gp(seed=seed, n_startup_trials=k),
        "gp, start n/2": lambda: gp(seed=seed, n_startup_trials=half),
        "gp, start max(4, n/2)": lambda: gp(seed=seed, n_startup_trials=four),
        "sobol n/3, gp": lambda: samplers.start_then_model(
            sobol(), gp(seed=seed, n_startup_trials=k), k, "Sobol", "GP"),
        "sobol": sobol,
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        # what `harness sweep` builds by default (harness.study.search), the chosen start
        "harness default": lambda: search.SAMPLERS.get(SweepFile.model_fields["sampler"].default)(
            SweepFile(n_trials=n_trials, params={"x": {"type": "int", "low": 0, "high": 1}}),
            seed),
    }


def one_study(make, n_trials: int, seed: int, examples: int) -> tuple[float, float]:
    """(true value of the trial a sweep picks, the sampler's seconds per trial)."""
    import optuna
    study = optuna.create_study(direction="maximize", sampler=make())
    spent = [0.0]

    def objective(trial):
        lr = trial.suggest_float("trainer.learning_rate", *LR, log=True)
        epochs = trial.suggest_int("trainer.num_train_epochs", 1, 3)
        r = trial.suggest_categorical("adapter.r", list(RANKS))
        t = time.perf_counter()  # the suggestions above are the sampler's work
        p = true_accuracy(lr, epochs, r)
        trial.set_user_attr("true", p)
        # the same noise stream per (seed, trial) for every candidate
        observed = np.random.default_rng([seed, trial.number]).binomial(examples, p) / examples
        spent[0] += time.perf_counter() - t
        return observed

    t = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    sampler_s = (time.perf_counter() - t - spent[0]) / n_trials
    return study.best_trial.user_attrs["true"], sampler_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--only", default="", help="candidate names, ';'-separated")
    ap.add_argument("--examples", type=int, default=EXAMPLES, help="golden-set examples the "
                    "objective's noise is the sampling noise of")
    ap.add_argument("--within", type=float, default=0.05, help="'near' = within this share "
                    "of the optimum")
    args = ap.parse_args()
    import optuna
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    best = optimum()
    names = [n for n in candidates(3, 0) if not args.only or n in args.only.split(";")]
    names = ["random"] + [n for n in names if n != "random"]  # the reference, first
    print(f"optimum {best:.4f}; noise sd at the optimum "
          f"{math.sqrt(best * (1 - best) / args.examples):.4f} ({args.examples} examples); "
          f"{args.seeds} seeds\n")
    head = " | ".join(f"regret@{n} | near@{n}" for n in BUDGETS)
    print(f"| candidate | {head} | ms/trial |")
    print("|---" * (2 + 2 * len(BUDGETS)) + "|")
    regrets: dict[str, dict[int, np.ndarray]] = {}
    for name in names:
        cells, seconds, regrets[name] = [], [], {}
        for n in BUDGETS:
            values = []
            for seed in range(args.seeds):
                value, s = one_study(candidates(n, seed)[name], n, seed, args.examples)
                values.append(value)
                seconds.append(s)
            regret = regrets[name][n] = best - np.array(values)
            near = np.mean(np.array(values) >= (1 - args.within) * best)
            cells.append(f"{regret.mean():.4f} ±{_sem(regret):.4f} | {near:.0%}")
        print(f"| {name} | {' | '.join(cells)} | {1000 * np.mean(seconds):.1f} |", flush=True)
    # the same seeds and noise for every candidate: each one's regret less random's, paired
    print("\nregret less random's, paired over seeds (negative: closer to the optimum)\n")
    print("| candidate | " + " | ".join(f"@{n}" for n in BUDGETS) + " |")
    print("|---" * (1 + len(BUDGETS)) + "|")
    for name in names[1:]:
        diffs = [regrets[name][n] - regrets["random"][n] for n in BUDGETS]
        print(f"| {name} | " + " | ".join(f"{d.mean():+.4f} ±{_sem(d):.4f}" for d in diffs)
              + " |")


def _sem(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(len(x)))


if __name__ == "__main__":
    main()
