"""How large a lift a held-out golden set can detect: the power of the harness's own paired test
(harness.stats.paired; McNemar's exact test for a 0/1 metric such as numeric_accuracy), by
simulation.

    python bench/power.py --base 0.06 --n 85 20 [--break-rate 0.1] [--sims 2000]

Model of a tuned model against its base, example by example: an example the base gets right
breaks with probability `--break-rate`; one it gets wrong is fixed with the probability that
makes the expected accuracy rise by `lift`. For each n (held-out examples) it prints the power
at each lift and the smallest lift with at least 80% power at p < 0.05 (two-sided), beside the
figure the harness computes exactly for `harness validate` and its reports
(harness.eval.stats.detectable_lift): the simulation checks it.
"""
from __future__ import annotations

import argparse

import numpy as np

from harness.eval import metrics, stats


def power(n: int, base: float, lift: float, break_rate: float, sims: int, seed: int = 0) -> float:
    """Share of simulated before/after pairs whose paired test gives p < 0.05."""
    metric = metrics.load("numeric_accuracy")
    fix = (lift + base * break_rate) / (1 - base)  # (1 - base) * fix - base * break = lift
    if not 0 <= fix <= 1:
        return float("nan")
    rng = np.random.default_rng(seed)
    cols = {k: [""] * n for k in metric.features}
    hits = 0
    for _ in range(sims):
        before = rng.random(n) < base
        flip = rng.random(n) < np.where(before, break_rate, fix)
        after = before ^ flip
        d = stats.paired(metric, {}, before.astype(float).tolist(), after.astype(float).tolist(),
                         cols, cols, n_boot=1)
        hits += d.p_value < 0.05
    return hits / sims


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=float, required=True, help="the base model's accuracy")
    ap.add_argument("--n", type=int, nargs="+", default=[85, 20], help="held-out examples")
    ap.add_argument("--break-rate", type=float, default=0.1,
                    help="chance that an example the base gets right goes wrong after tuning")
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--lifts", type=float, nargs="+",
                    default=[0.02 * i for i in range(1, 26)])
    args = ap.parse_args()
    print(f"base accuracy {args.base}, break rate {args.break_rate}, {args.sims} simulations, "
          "p < 0.05 two-sided (McNemar exact, harness.stats.paired)")
    print("| held-out n | " + " | ".join(f"+{x:.2f}" for x in args.lifts) + " |")
    print("|---|" + "---|" * len(args.lifts))
    smallest = {}
    for n in args.n:
        row = [power(n, args.base, x, args.break_rate, args.sims) for x in args.lifts]
        smallest[n] = next((x for x, p in zip(args.lifts, row) if p >= 0.8), None)
        print(f"| {n} | " + " | ".join(f"{p:.2f}" for p in row) + " |", flush=True)
    for n, x in smallest.items():
        exact = stats.detectable_lift(n, args.base, args.break_rate)
        print(f"n={n}: smallest lift with 80% power: "
              + (f"+{x:.2f} ({args.base:.2f} -> {args.base + x:.2f})" if x else "none tried")
              + f"; exact (harness.eval.stats.detectable_lift, steps of {stats.LIFT_STEP}): "
              + (f"+{exact:.3f}" if exact is not None else "none"))


if __name__ == "__main__":
    main()
