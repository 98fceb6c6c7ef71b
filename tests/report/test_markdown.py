"""Reports from plain rows: each metric read in its own direction, p-values with Holm's
adjustment, and a note when there are too few examples for a bootstrap CI."""
from harness.eval import scoring, stats
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
    b = scoring.SetResult("s", {"exact_match": 2 / 3},
                             [{"exact_match": x} for x in (1.0, 1.0, 0.0)], cols(["a", "b", "x"]))
    a = scoring.SetResult("s", {"exact_match": 1 / 3},
                             [{"exact_match": x} for x in (0.0, 1.0, 0.0)], cols(["x", "b", "x"]))
    ch = scoring.compare({"s": b}, {"s": a})["changes"]["s/exact_match"]
    assert (ch["fixed_ids"], ch["broken_ids"]) == ([0], [])


def test_the_before_after_table_holds_holm_and_warns_of_few_examples():
    cmp = {"before": {"a/x": 0.1, "a/y": 0.2}, "after": {"a/x": 0.5, "a/y": 0.3},
           "delta": {"a/x": 0.4, "a/y": 0.1}, "ci_low": {"a/x": 0.1, "a/y": -0.1},
           "ci_high": {"a/x": 0.6, "a/y": 0.3}, "p_value": {"a/x": 0.01, "a/y": 0.2},
           "test": {"a/x": "McNemar (exact)", "a/y": "paired permutation (exact)"},
           "n": {"a/x": 4, "a/y": 4}, "changes": {}}
    cmp["p_holm"] = stats.holm(cmp["p_value"])
    text = markdown.before_after(cmp)
    assert "Holm p (2 tests)" in text and "| 0.02 |" in text
    assert f"a has 4. Below {stats.EXACT_BELOW} pairs the bootstrap CI is unreliable" in text
    assert markdown.delta_line(cmp, "a/x") == ("a/x: 0.1 -> 0.5 (+0.4, 95% CI [+0.1, +0.6], "
                                             "p=0.01, Holm p=0.02)")
    cmp["n"] = {"a/x": 40, "a/y": 40}
    assert "Few examples" not in markdown.before_after(cmp)
