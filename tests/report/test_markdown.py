"""Reports from plain rows: each metric read in its own direction, p-values with Holm's
adjustment, and a note when there are too few examples for a bootstrap CI."""
from harness.eval import scoring, stats
from harness.eval.comparison import Comparison, MetricChange, compare
from harness.report import markdown


def _set(name, examples, **columns):
    keys = [k for k in examples[0] if k != "prompt"]
    return scoring.SetResult(name, {k: 0.0 for k in keys}, examples, columns)


def test_lower_is_better_metrics_rank_and_count_their_own_way(monkeypatch):
    """Perplexity going down is an improvement, and a 0/1 metric marked lower-is-better counts
    a 1 -> 0 as fixed."""
    before = {"m": _set("m", [{"prompt": "p0", "perplexity": 3.0},
                              {"prompt": "p1", "perplexity": 5.0},
                              {"prompt": "p2", "perplexity": 4.0}])}
    after = {"m": _set("m", [{"prompt": "p0", "perplexity": 4.0},
                             {"prompt": "p1", "perplexity": 2.0},
                             {"prompt": "p2", "perplexity": 4.0}])}
    table = markdown.examples(before, after)
    rows = [line for line in table.splitlines() if line.startswith("| p") and "prompt" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| p1", "| p0", "| p2"]  # better, worse, same

    from harness.eval import metrics
    monkeypatch.setattr(metrics.load("exact_match"), "higher_is_better", False)
    cols = lambda preds: {"predictions": preds, "references": ["a", "b", "c"]}  # noqa: E731
    scored = lambda xs: [{"prompt": f"p{i}", "exact_match": x} for i, x in enumerate(xs)]  # noqa
    b = scoring.SetResult("s", {"exact_match": 2 / 3}, scored((1.0, 1.0, 0.0)),
                          cols(["a", "b", "x"]))
    a = scoring.SetResult("s", {"exact_match": 1 / 3}, scored((0.0, 1.0, 0.0)),
                          cols(["x", "b", "x"]))
    cmp = compare({"s": b}, {"s": a})
    assert (cmp["s/exact_match"].fixed_ids, cmp["s/exact_match"].broken_ids) == ((0,), ())
    assert markdown.changed({"s": b}, cmp) == ("- `s/exact_match` fixed 1: #1 p0\n"
                                               "- `s/exact_match` broken 0")


def _comparison(n: int) -> Comparison:
    holm = stats.holm({"a/x": 0.01, "a/y": 0.2})
    return Comparison((MetricChange("a/x", 0.1, 0.5, 0.4, 0.1, 0.6, 0.01, holm["a/x"],
                                    "McNemar (exact)", n, fixed=2, broken=0),
                       MetricChange("a/y", 0.2, 0.3, 0.1, -0.1, 0.3, 0.2, holm["a/y"],
                                    "paired permutation (exact)", n)))


def test_the_before_after_table_holds_holm_and_warns_of_few_examples():
    text = markdown.before_after(_comparison(4))
    assert "Holm p (2 tests)" in text and "| 0.02 |" in text
    assert "| a/x | 0.1 | 0.5 | +0.4 [+0.1, +0.6] | 0.01 (McNemar (exact)) | 0.02 | 2 / 0 |" \
        in text
    assert f"a has 4. Below {stats.EXACT_BELOW} pairs the bootstrap CI is unreliable" in text
    assert "Few examples" not in markdown.before_after(_comparison(40))
