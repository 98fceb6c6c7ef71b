"""What a sweep optimizes and how much its golden sets can show: the objective's direction
(sweep.direction, else inferred from the objective: eval_loss and lower-is-better metrics
minimize), its checks, and the lift a golden set of a given size can detect with the report's
paired tests (Sizing), stated by `harness validate` before any scores exist and by the reports
from the observed scores."""
from __future__ import annotations

import math
from dataclasses import dataclass

from harness.core.errors import HarnessError
from harness.eval import metrics, stats

#: the objective that is no golden-set metric: the trained model's loss on data.eval_rows, as
#: TRL's trainer evaluates it after training (and logs it to the run)
EVAL_LOSS = "eval_loss"


def direction(recipe) -> str:
    """The sweep's direction, resolved once for the study, the pruner, the reports and
    `harness validate`: sweep.direction where set, else minimize eval_loss and a metric whose
    module says lower is better (perplexity), maximize every other metric."""
    if recipe.sweep.direction:
        return recipe.sweep.direction
    key = recipe.sweep.objective
    if key == EVAL_LOSS:
        return "minimize"
    name = key.split("/", 1)[-1]
    if name not in metrics.METRICS:  # a benchmark's lm-eval metric (acc, exact_match...)
        return "maximize"
    return "maximize" if metrics.info(name).higher_is_better else "minimize"


def check(recipe, keys: list[str]) -> None:
    """The objective names something the recipe produces: eval_loss needs held-out rows;
    a metric key must be one of the golden sets' `keys` (checked for a sweep)."""
    key = recipe.sweep.objective
    if key == EVAL_LOSS:
        if not recipe.data.eval_rows:
            raise HarnessError("eval_loss is the trainer's loss on held-out training rows: set "
                               "data.eval_rows (e.g. 32)", file=recipe.source,
                               key="sweep.objective")
        return
    if recipe.sweep.space and key not in keys:
        from harness.core.errors import did_you_mean
        raise HarnessError(f"objective {key!r} is no golden-set metric of this recipe"
                           f"{did_you_mean(key, keys)} (known: {', '.join(keys)}, or "
                           f"{EVAL_LOSS})", file=recipe.source, key="sweep.objective")


# ---------------------------------------------------------------- what a golden set can show

#: base accuracies a 0/1 metric's detectable lift is stated from before any scores exist
PLANNING_BASES = (0.1, 0.5)


def held_out_size(n: int, share: float) -> int:
    """Examples goldensets.split holds out of n at `share`."""
    return min(n - 1, max(1, round(share * n)))


@dataclass(frozen=True)
class Sizing:
    """The lift one golden set (or its held-out part) of `n` examples can show at p < ALPHA
    with POWER in the report's paired tests: on a 0/1 metric, accuracy points from each base
    accuracy (McNemar exact, stats.detectable_lift); on another, in SDs of the per-example
    difference after - before (stats.detectable_shift), or in the metric's units where the
    SD was observed."""
    name: str
    n: int
    binary: tuple[str, ...]  # its 0/1 metrics
    continuous: tuple[str, ...]
    lifts: tuple[tuple[float, float | None], ...]  # (base accuracy, detectable lift)
    shift_sd: float  # continuous metrics: detectable mean difference, in SDs
    what: str = ""  # e.g. "held out of selection"

    def line(self) -> str:
        """One line for `harness validate`."""
        head = f"{self.name}: {self.n} examples{f' {self.what}' if self.what else ''}"
        parts = []
        if self.binary:
            found = ", ".join(f"+{lift * 100:.1f} points from {base:.2f}" if lift is not None
                              else f"none from {base:.2f}" for base, lift in self.lifts)
            parts.append(f"{'/'.join(self.binary)} (0/1): {found} "
                         f"({stats.BREAK_RATE:.0%} of right answers broken)")
        if self.continuous:
            parts.append(f"{'/'.join(self.continuous)}: " + (
                f"a mean change of {self.shift_sd:.2f} SD of the per-example difference"
                if math.isfinite(self.shift_sd) else "none (too few pairs for p < "
                f"{stats.ALPHA:g})"))
        return f"{head}; detectable with {stats.POWER:.0%} power at p < {stats.ALPHA:g} " \
               f"(paired test): " + "; ".join(parts)


def planned(name: str, n: int, metric_names: list[str], what: str = "") -> Sizing:
    """The Sizing of a golden set before any scores: 0/1 lifts from PLANNING_BASES."""
    known = [m for m in metric_names if m in metrics.METRICS]
    binary = tuple(m for m in known if metrics.info(m).binary)
    continuous = tuple(m for m in known if not metrics.info(m).binary)
    lifts = tuple((b, stats.detectable_lift(n, b)) for b in PLANNING_BASES) if binary else ()
    return Sizing(name, n, binary, continuous, lifts, stats.detectable_shift(n), what)


@dataclass(frozen=True)
class Observed:
    """One metric's detectable lift from its observed scores (a report row): `lift` in the
    metric's units, or None where the scores cannot say (one example, no spread)."""
    key: str
    n: int
    lift: float | None  # accuracy as a fraction (0.1: ten points) for a 0/1 metric
    basis: str  # how it was computed, for the reader
    binary: bool = False


def observed(before: dict, after: dict) -> list[Observed]:
    """Per metric of the sets scored on both sides (SetResults): a 0/1 metric's detectable lift
    in accuracy points from its observed before-accuracy; another's as detectable_shift times
    the observed SD of its per-example difference after - before."""
    out = []
    for name, res in after.items():
        prev = before.get(name)
        if prev is None or not res.examples:
            continue
        n = len(res.examples)
        for metric_name, value in prev.metrics.items():
            if metric_name not in res.metrics:
                continue
            key = f"{name}/{metric_name}"
            if res.metric(metric_name).binary:
                base = float(value)
                lift = stats.detectable_lift(n, base) if 0 <= base < 1 else None
                out.append(Observed(key, n, lift, ("none at this size: " if lift is None else "")
                                    + f"0/1, McNemar exact, from the before accuracy {base:.3g}, "
                                    f"{stats.BREAK_RATE:.0%} of right answers broken",
                                    binary=True))
                continue
            diffs = [a[metric_name] - b[metric_name]
                     for b, a in zip(prev.examples, res.examples)]
            sd, shift = _sd(diffs), stats.detectable_shift(n)
            lift = sd * shift if sd and math.isfinite(shift) else None
            out.append(Observed(key, n, lift, f"no paired test on {n} pairs reaches p < "
                                f"{stats.ALPHA:g}" if not math.isfinite(shift) else
                                f"{shift:.3g} x the observed SD {sd:.3g} of "
                                "the per-example difference"
                                + (" (per-example scores; the metric is a corpus one)"
                                   if getattr(res.metric(metric_name), "corpus", False)
                                   else "")))
    return out


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
