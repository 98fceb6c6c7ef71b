"""Before/after statistics a reader can trust: a paired bootstrap 95% CI of each metric's
delta, and a paired test: McNemar's exact test for 0/1 per-example scores; for other scores, a
paired bootstrap (corpus metrics such as BLEU or perplexity) or Wilcoxon signed-rank, and below
EXACT_BELOW pairs an exact paired permutation test instead (every swap of before and after
within pairs), since a bootstrap's p cannot be trusted there (4 pairs, all improving: a
bootstrap said <0.001; no paired test on 4 pairs can go below 0.125). Holm's adjustment covers
the several comparisons of one report."""
from __future__ import annotations

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
