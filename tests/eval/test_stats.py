import numpy as np
import pytest
from scipy import stats as sps

from harness.eval import metrics, stats


def _paired(name, b_cols, a_cols, args=None):
    m = metrics.load(name)
    b = metrics.compute(name, b_cols, args)["scores"]
    a = metrics.compute(name, a_cols, args)["scores"]
    return stats.paired(m, {**metrics.module_and_args(name)[1], **(args or {})}, b, a,
                        {k: b_cols[k] for k in m.features}, {k: a_cols[k] for k in m.features})


def test_mcnemar_exact_on_discordant_pairs():
    refs = ["#### 1"] * 20
    before = {"predictions": ["#### 1"] * 5 + ["#### 0"] * 15, "references": refs}
    # 9 fixed (wrong -> right), 1 broken (right -> wrong)
    after = {"predictions": ["#### 0"] + ["#### 1"] * 4 + ["#### 1"] * 9 + ["#### 0"] * 6,
             "references": refs}
    d = _paired("numeric_accuracy", before, after)
    assert (d.before, d.after, d.delta) == (0.25, 0.65, pytest.approx(0.4))
    assert d.test == "McNemar (exact)"
    assert d.p_value == pytest.approx(sps.binomtest(1, 10, 0.5).pvalue)
    assert d.ci_low < 0.4 < d.ci_high and d.ci_low > 0  # a real improvement excludes 0


def test_no_change_gives_zero_delta_and_p_one():
    cols = {"predictions": ["a b", "c"], "references": ["a b", "d"]}
    d = _paired("f1", cols, cols)
    assert (d.delta, d.ci_low, d.ci_high, d.p_value) == (0, 0, 0, 1.0)


def test_corpus_metric_is_recomputed_on_each_resample():
    refs = [f"the cat number {i} sat on the mat" for i in range(30)]
    before = {"predictions": [f"a dog {i} stood" for i in range(30)], "references": refs}
    after = {"predictions": refs, "references": refs}
    d = _paired("bleu", before, after)
    from sacrebleu.metrics import BLEU
    assert d.after == pytest.approx(100.0)
    assert d.before == pytest.approx(BLEU().corpus_score(before["predictions"], [refs]).score)
    assert d.test == "paired bootstrap" and d.p_value < 0.01 and d.ci_low > 50


def test_continuous_metric_uses_wilcoxon():
    rng = np.random.default_rng(0)
    refs = [" ".join(f"w{j}" for j in range(6)) for _ in range(25)]
    before = {"predictions": [" ".join(r.split()[:2]) for r in refs], "references": refs}
    after = {"predictions": [" ".join(r.split()[:int(rng.integers(3, 7))]) for r in refs],
             "references": refs}
    d = _paired("f1", before, after)
    assert d.test == "Wilcoxon signed-rank" and d.delta > 0 and d.p_value < 0.001


@pytest.mark.slow
def test_few_pairs_get_exact_p_values():
    """4 pairs, every one better after: no paired test can say less than 2/16 (two-sided); a
    bootstrap said <0.001. Corpus metrics are permuted pair by pair too."""
    m = metrics.load("perplexity")
    b = {"nll": [10.0, 12.0, 9.0, 11.0], "tokens": [5, 6, 4, 5]}
    a = {"nll": [8.0, 10.0, 7.0, 9.5], "tokens": [5, 6, 4, 5]}
    d = stats.paired(m, {}, [0.0] * 4, [0.0] * 4, b, a)
    assert d.test == "paired permutation (exact)" and d.p_value == pytest.approx(0.125)
    assert d.delta < 0
    refs = [f"the cat {i} sat on the mat" for i in range(stats.EXACT_BELOW - 1)]
    worse = {"predictions": [f"a dog {i}" for i in range(len(refs))], "references": refs}
    same = _paired("bleu", worse, {"predictions": refs, "references": refs})
    assert same.test == "paired permutation (exact)"
    assert same.p_value == pytest.approx(2 / 2 ** len(refs))  # all swapped or none: the extremes
    one = stats.paired(m, {}, [0.0], [0.0], {"nll": [10.0], "tokens": [5]},
                       {"nll": [8.0], "tokens": [5]})
    assert one.p_value == 1.0  # a single pair: swapped or not, equally extreme
    enough = [f"the cat {i} sat on the mat" for i in range(stats.EXACT_BELOW)]
    d = _paired("bleu", {"predictions": ["x"] * len(enough), "references": enough},
                {"predictions": enough, "references": enough})
    assert d.test == "paired bootstrap"


def test_holm_adjusts_the_reports_p_values_step_down():
    got = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, each at least the one before
    assert got == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert stats.holm({}) == {}


def test_format_p_is_the_one_way_p_values_print():
    assert stats.format_p(0.0) == "<0.001" and stats.format_p(0.125) == "0.125"


def _simulated_power(metric: str, n: int, draw, sims: int = 400) -> float:
    """Share of `sims` simulated before/after pairs (`draw(rng)` -> before, after scores) on
    which the harness's own paired test (stats.paired) gives p < 0.05."""
    m = metrics.load(metric)
    cols = {k: [""] * n for k in m.features}
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(sims):
        before, after = draw(rng)
        hits += stats.paired(m, {}, list(before), list(after), cols, cols, n_boot=1).p_value < 0.05
    return hits / sims


@pytest.mark.parametrize("n, base, lift", [(30, 0.2, 0.2), (85, 0.0588, 0.10)])
def test_mcnemar_power_is_what_the_harness_test_finds_in_simulation(n, base, lift):
    """bench/power.py's model, computed exactly, against the report's McNemar test simulated."""
    fix = (lift + base * stats.BREAK_RATE) / (1 - base)

    def draw(rng):
        before = rng.random(n) < base
        after = before ^ (rng.random(n) < np.where(before, stats.BREAK_RATE, fix))
        return before.astype(float), after.astype(float)
    exact = stats.mcnemar_power(n, base, lift)
    simulated = _simulated_power("numeric_accuracy", n, draw)
    assert 0.3 < exact < 0.95
    assert abs(simulated - exact) < 4 * np.sqrt(exact * (1 - exact) / 400)
    # the documented figure (docs/guide/evaluation.md): 85 held out from 0.0588 -> +0.105
    assert stats.detectable_lift(85, 0.0588) == pytest.approx(0.105)
    lift_found = stats.detectable_lift(n, base)
    assert stats.mcnemar_power(n, base, lift_found) >= stats.POWER > stats.mcnemar_power(
        n, base, lift_found - stats.LIFT_STEP)


def test_a_shift_of_the_detectable_sds_is_found_with_about_the_stated_power():
    n = 50
    shift = stats.detectable_shift(n)
    assert shift == pytest.approx((1.959964 + 0.841621) / np.sqrt(n), rel=1e-5)
    simulated = _simulated_power("f1", n, lambda rng: (np.zeros(n), rng.normal(shift, 1.0, n)))
    # the Wilcoxon test keeps ~95% of a t test's efficiency on normal differences
    assert 0.7 < simulated < 0.88
