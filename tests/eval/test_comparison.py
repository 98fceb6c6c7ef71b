"""The before/after comparison as a type: built from real metrics' scores, written as text one
way, carried through JSON and through eval/results.json (version 2, and version 1 files as
harness runs wrote them before: a dict of dicts) on a real MLflow store."""
import json

import pytest

from harness.core.errors import HarnessError
from harness.eval import metrics, stats
from harness.eval.comparison import Comparison, MetricChange, change_line, compare, delta_text
from harness.eval.results import RunResults, read_results, write_results
from harness.eval.scoring import SetResult, results_to_json

REFS = ["paris", "the red fox", "four", "blue whale", "1969", "oxygen"]


def _scored(name: str, preds: list[str]) -> SetResult:
    """A golden set scored by the real exact_match (0/1) and f1 (continuous) metrics."""
    cols = {"predictions": preds, "references": REFS}
    values, examples = {}, [{"prompt": f"q{i}", "reference": r, "prediction": p}
                            for i, (p, r) in enumerate(zip(preds, REFS))]
    for m in ("exact_match", "f1"):
        out = metrics.compute(m, cols)
        values[m] = out[m]
        for ex, s in zip(examples, out["scores"]):
            ex[m] = s
    return SetResult(name, values, examples, cols)


@pytest.fixture(scope="module")
def sides():
    before = {"qa": _scored("qa", ["paris", "a red dog", "five", "whale", "1969", "iron"])}
    after = {"qa": _scored("qa", ["paris", "the red fox", "four", "whale", "1970", "oxygen"])}
    base = {"qa": _scored("qa", ["rome", "dog", "five", "shark", "1969", "iron"])}
    return before, after, base


def test_compare_builds_one_change_per_metric_in_order(sides):
    before, after, base = sides
    cmp = compare(before, after, base)
    assert cmp.keys() == ["qa/exact_match", "qa/f1"]
    em = cmp["qa/exact_match"]
    assert (em.before, em.after) == (before["qa"].metrics["exact_match"],
                                     after["qa"].metrics["exact_match"])
    assert em.delta == pytest.approx(em.after - em.before)
    # rows 1, 2 and 5 went right; row 4 ("1969" -> "1970") went wrong
    assert (em.fixed, em.broken, em.fixed_ids, em.broken_ids) == (3, 1, (1, 2, 5), (4,))
    assert em.test == "McNemar (exact)" and em.n == 6 and em.counts_changes
    f1 = cmp["qa/f1"]
    assert not f1.counts_changes and f1.fixed_ids is None
    assert f1.test == "paired permutation (exact)"  # 6 pairs: below EXACT_BELOW
    assert {m.key: m.p_holm for m in cmp} == stats.holm({m.key: m.p_value for m in cmp})
    assert cmp.base == {"qa/exact_match": base["qa"].metrics["exact_match"],
                        "qa/f1": base["qa"].metrics["f1"]}
    assert cmp.after_values() == {"qa/exact_match": em.after, "qa/f1": f1.after}
    assert cmp.side("delta") == {"qa/exact_match": em.delta, "qa/f1": f1.delta}
    assert cmp.get("qa/nope") is None and "qa/f1" in cmp and len(cmp) == 2
    with pytest.raises(KeyError):
        cmp["qa/nope"]


def test_with_holm_and_only_keep_the_rest(sides):
    cmp = compare(*sides)
    adjusted = cmp.with_holm({"qa/exact_match": 0.5, "qa/f1": 0.7})
    assert [m.p_holm for m in adjusted] == [0.5, 0.7]
    assert [m.p_value for m in adjusted] == [m.p_value for m in cmp]
    one = cmp.only(["qa/f1"])
    assert one.keys() == ["qa/f1"] and one["qa/f1"] == cmp["qa/f1"]
    assert one.base == {"qa/f1": cmp.base["qa/f1"]}


def test_the_delta_is_written_one_way():
    m = MetricChange("a/x", 0.1, 0.5, 0.4, 0.1, 0.6, 0.01, 0.02, "McNemar (exact)", 4)
    assert delta_text(m) == "+0.4 [+0.1, +0.6]"
    assert change_line(m) == "a/x: 0.1 -> 0.5 (+0.4, 95% CI [+0.1, +0.6], p=0.01, Holm p=0.02)"
    # a bootstrap p of 0 is below its resolution; an old file without a CI shows none
    bare = MetricChange("a/y", 0.2, 0.3, 0.1, p_value=0.0)
    assert change_line(bare) == f"a/y: 0.2 -> 0.3 (+0.1, p=<{1 / stats.N_BOOT:g})"


def test_a_comparison_survives_json(sides):
    cmp = compare(*sides)
    again = Comparison.from_json(json.loads(json.dumps(cmp.to_json())))
    assert again == cmp
    assert isinstance(again["qa/exact_match"].fixed_ids, tuple)


def test_run_results_round_trip_through_a_real_store(sides, recipe_dict):
    from harness.config import recipe
    from harness.tracking.tracker import Tracker
    before, after, base = sides
    tracker = Tracker(recipe.build(recipe_dict, "t.yaml"))
    written = RunResults(after, before, compare(before, after, base))
    with tracker.run("results") as run_id:
        write_results(tracker, written)
    assert tracker.load_json(run_id, "eval/results.json")["version"] == 2
    read = read_results(tracker, run_id)
    assert read == written
    assert read_results(tracker, "") is None  # no run: nothing to read


def _version_1(before, after, cmp: Comparison) -> dict:
    """eval/results.json as harness runs wrote it before version 2: no version, the comparison
    a dict of dicts (side -> key -> value), fixed and broken under "changes", "base" added."""
    sides = {side: {m.key: getattr(m, side) for m in cmp}
             for side in ("before", "after", "delta", "ci_low", "ci_high", "p_value", "test", "n",
                          "p_holm")}
    sides["changes"] = {m.key: {"fixed": m.fixed, "broken": m.broken,
                                "fixed_ids": list(m.fixed_ids), "broken_ids": list(m.broken_ids)}
                        for m in cmp if m.counts_changes}
    sides["base"] = cmp.base
    return {"comparison": sides, "after": results_to_json(after),
            "before": results_to_json(before)}


def test_a_version_1_file_reads_as_the_same_results(sides):
    before, after, base = sides
    cmp = compare(before, after, base)
    old = json.loads(json.dumps(_version_1(before, after, cmp)))
    read = RunResults.from_json(old)
    assert read.version == 1
    assert read.comparison == cmp
    assert read.after == after and read.before == before


def test_older_shapes_read_with_what_they_hold(sides):
    before, after, _ = sides
    # harness eval without --before, harness compare's model runs: one side, no comparison
    alone = RunResults.from_json({"after": results_to_json(after)})
    assert (alone.before, alone.comparison, alone.version) == (None, None, 1)
    # the oldest files: no CI, no Holm, counts without row ids
    oldest = RunResults.from_json({"after": results_to_json(after), "comparison": {
        "before": {"qa/exact_match": 0.5}, "after": {"qa/exact_match": 0.83},
        "delta": {"qa/exact_match": 0.33}, "changes": {"qa/exact_match": {"fixed": 3,
                                                                          "broken": 1}}}})
    m = oldest.comparison["qa/exact_match"]
    assert (m.fixed, m.broken, m.fixed_ids, m.ci_low, m.p_holm) == (3, 1, None, None, None)
    assert delta_text(m, labelled=True, p=True) == "+0.33"
    with pytest.raises(HarnessError, match="version 3"):
        RunResults.from_json({"version": 3, "after": {}})
