"""Before/after statistics a reader can trust: a paired bootstrap 95% CI of each metric's
delta, and a paired test: McNemar's exact test for 0/1 per-example scores; for other scores, a
paired bootstrap (corpus metrics such as BLEU or perplexity) or Wilcoxon signed-rank, and below
EXACT_BELOW pairs an exact paired permutation test instead (every swap of before and after
within pairs), since a bootstrap's p cannot be trusted there (4 pairs, all improving: a
bootstrap said <0.001; no paired test on 4 pairs can go below 0.125). Holm's adjustment covers
the several comparisons of one report."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 1000
#: below this many pairs, p-values come from exact permutation tests (2**n arrangements at most
#: 2,048) and reports say that the bootstrap CI is unreliable
EXACT_BELOW = 12


@dataclass
class Delta:
    before: float
    after: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str

    def as_dict(self) -> dict:
        return asdict(self)


def _subset(columns: dict, idx: np.ndarray) -> dict:
    return {k: [v[i] for i in idx] for k, v in columns.items()}


def paired(metric, args: dict, b_scores: list[float], a_scores: list[float], b_cols: dict,
           a_cols: dict, n_boot: int = N_BOOT, seed: int = 0) -> Delta:
    """Delta after - before of one metric over the same examples. `metric` is the loaded
    HarnessMetric; `*_cols` are its inputs per example, so corpus metrics are recomputed on
    each resample rather than averaged."""
    from scipy import stats

    n = len(b_scores)
    agg = lambda s, c, idx: metric.aggregate([s[i] for i in idx], **_subset(c, idx),  # noqa
                                             **args)
    everything = np.arange(n)
    before, after = agg(b_scores, b_cols, everything), agg(a_scores, a_cols, everything)
    rng = np.random.default_rng(seed)
    deltas = np.array([agg(a_scores, a_cols, idx) - agg(b_scores, b_cols, idx)
                       for idx in (rng.integers(0, n, n) for _ in range(n_boot))])
    low, high = np.percentile(deltas, [2.5, 97.5])
    diff = np.asarray(a_scores) - np.asarray(b_scores)
    if not metric.binary and n < EXACT_BELOW:
        scores, cols = _pooled(b_scores, a_scores, b_cols, a_cols)
        p = _exact_permutation_p(lambda before_idx, after_idx: agg(scores, cols, after_idx)
                                 - agg(scores, cols, before_idx), n)
        test = "paired permutation (exact)"
    elif getattr(metric, "corpus", False):
        # two-sided bootstrap p: how often the resampled delta lands on the other side of 0
        p = min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()))
        test = "paired bootstrap"
    elif metric.binary:
        fixed, broken = int((diff > 0).sum()), int((diff < 0).sum())
        p = stats.binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken \
            else 1.0
        test = "McNemar (exact)"
    else:
        p = stats.wilcoxon(diff).pvalue if np.any(diff != 0) else 1.0
        test = "Wilcoxon signed-rank"
    return Delta(float(before), float(after), float(after - before), float(low), float(high),
                 float(p), test)


def _pooled(b_scores, a_scores, b_cols: dict, a_cols: dict) -> tuple[list, dict]:
    """Before's examples then after's, so an index below n is a before, n and up an after."""
    return list(b_scores) + list(a_scores), {k: list(b_cols[k]) + list(a_cols[k]) for k in b_cols}


def _exact_permutation_p(statistic, n: int) -> float:
    """Two-sided p of `statistic(before_idx, after_idx)` over all 2**n swaps within pairs
    (scipy's permutation_test enumerates them all for so few pairs)."""
    if n < 2:  # one pair: itself or swapped, each as extreme as the other
        return 1.0
    from scipy import stats
    res = stats.permutation_test((np.arange(n), np.arange(n) + n), statistic,
                                 permutation_type="samples", n_resamples=np.inf,
                                 vectorized=False, alternative="two-sided")
    return float(res.pvalue)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of several p-values (family-wise error at the level read)."""
    ordered = sorted(p_values, key=lambda k: p_values[k])
    out, running = {}, 0.0
    for i, key in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - i) * p_values[key]))
        out[key] = running
    return out


def better(higher_is_better: bool, before: float, after: float) -> bool:
    """Whether `after` improves on `before` for a metric of this direction."""
    return after > before if higher_is_better else after < before


def format_p(p: float) -> str:
    """A p-value as read: a bootstrap's 0 means below its resolution."""
    return f"<{1 / N_BOOT:g}" if p < 1 / N_BOOT else f"{p:.3g}"


# ---------------------------------------------------------------- sizing a golden set

#: what a detectable lift is stated at: the power to find it, and the paired test's level
POWER = 0.8
ALPHA = 0.05
#: the share of the examples the base got right that tuning breaks, assumed when sizing a 0/1
#: metric (bench/power.py's model; the report's fixed/broken counts show the real one)
BREAK_RATE = 0.1
#: detectable lifts are searched in steps of this many accuracy points (half a point)
LIFT_STEP = 0.005


def _log_binom(k: np.ndarray, m: np.ndarray, p: float, logf: np.ndarray) -> np.ndarray:
    """log P(X = k) for X ~ Binomial(m, p), elementwise (p may be 0 or 1; k > m: -inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = logf[m] - logf[k] - logf[np.maximum(m - k, 0)] \
            + np.where(k > 0, k * np.log(p), 0.0) \
            + np.where(m - k > 0, (m - k) * np.log1p(-p), 0.0)
    return np.where(k <= m, np.nan_to_num(out, nan=-np.inf), -np.inf)


@functools.lru_cache(maxsize=32)
def _mcnemar_cut(n: int, alpha: float) -> np.ndarray:
    """Per number k <= n of discordant pairs, the largest count c of fixed (or broken) ones
    that McNemar's exact test rejects at p < alpha (twice the binomial(k, 1/2) tail up to c,
    as scipy's binomtest computes it); -1 where none is rejected."""
    logf = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    cut = np.full(n + 1, -1)
    for k in range(1, n + 1):
        j = np.arange(k // 2 + 1)
        tail = np.cumsum(np.exp(_log_binom(j, np.full_like(j, k), 0.5, logf)))
        cut[k] = int((2 * tail < alpha).sum()) - 1
    return cut


def mcnemar_power(n: int, base: float, lift: float, break_rate: float = BREAK_RATE,
                  alpha: float = ALPHA) -> float:
    """Power of McNemar's exact test (what `paired` runs on a 0/1 metric) to give p < alpha on
    n pairs, computed exactly rather than simulated. The model is bench/power.py's (which
    checks this by simulation): an example the base (accuracy `base`) got right breaks with
    probability `break_rate`; one it got wrong is fixed with the probability that makes the
    expected accuracy rise by `lift`. NaN where no fix rate gives that lift."""
    fix = (lift + base * break_rate) / (1 - base) if base < 1 else float("nan")
    if not -1e-9 <= fix <= 1 + 1e-9:  # (rounding at the ends is no reason to refuse)
        return float("nan")
    fix = min(max(fix, 0.0), 1.0)
    p_fix, p_break = (1 - base) * fix, base * break_rate
    q = p_fix + p_break
    if q == 0:
        return 0.0
    logf = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    # the discordant counts that carry any weight (12 SDs each side), each a row of j fixed
    sd = np.sqrt(n * q * (1 - q))
    k = np.arange(max(1, int(n * q - 12 * sd - 1)), min(n, int(n * q + 12 * sd + 1)) + 1)
    j = np.arange(k[-1] + 1)[None, :]
    c = _mcnemar_cut(n, alpha)[k][:, None]
    reject = (c >= 0) & ((j <= c) | (j >= k[:, None] - c))
    split = np.exp(_log_binom(j, k[:, None], p_fix / q, logf))
    weight = np.exp(_log_binom(k, np.full_like(k, n), q, logf))
    return float((weight * np.where(reject, split, 0.0).sum(axis=1)).sum())


def detectable_lift(n: int, base: float, break_rate: float = BREAK_RATE,
                    power: float = POWER, alpha: float = ALPHA) -> float | None:
    """The smallest lift in accuracy points (a multiple of LIFT_STEP) that McNemar's exact test
    on n pairs finds at p < alpha with at least `power` (mcnemar_power's model), by bisection
    (the power grows with the lift); None if no lift the model allows (every wrong answer
    fixed) does."""
    found = lambda i: mcnemar_power(n, base, i * LIFT_STEP, break_rate, alpha) >= power  # noqa
    low, high = 0, int((1 - base - base * break_rate) / LIFT_STEP + 1e-9)
    if high < 1 or not found(high):
        return None
    while high - low > 1:  # found(high) holds, found(low) does not (low 0: no lift)
        mid = (low + high) // 2
        low, high = (low, mid) if found(mid) else (mid, high)
    return round(high * LIFT_STEP, 6)


def detectable_shift(n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest mean paired difference, in SDs of the per-example difference (after -
    before), that a paired test on n pairs finds at p < alpha (two-sided) with `power`: the
    normal approximation (z_(1-alpha/2) + z_power) / sqrt(n). The harness's Wilcoxon test has
    ~95% of a t test's efficiency on normal differences, more on heavy-tailed ones. Infinite
    where no paired test on n pairs can reach p < alpha (all n improving gives p = 2 / 2**n)."""
    from statistics import NormalDist
    if n < 1 or 2 * 0.5 ** n >= alpha:
        return float("inf")
    z = NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) / np.sqrt(n)
