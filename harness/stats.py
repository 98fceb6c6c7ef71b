"""Before/after statistics a reader can trust: a paired bootstrap 95% CI of each metric's
delta, and a paired test (McNemar for 0/1 per-example scores, a paired bootstrap for corpus
metrics such as BLEU or macro F1, Wilcoxon signed-rank for other continuous scores)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 1000


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
    if getattr(metric, "corpus", False):
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


def format_p(p: float) -> str:
    """A p-value as read: a bootstrap's 0 means below its resolution."""
    return f"<{1 / N_BOOT:g}" if p < 1 / N_BOOT else f"{p:.3g}"
