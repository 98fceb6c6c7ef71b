"""Where the time went: nested phases counted once, in the innermost one, adding up to the wall."""
from harness.core import timing


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_nested_phases_count_each_second_once(monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    c = timing.Clock()
    clock.now += 2  # imports before the first phase: start-up
    with c.timed("score_before"):
        clock.now += 1
        with c.timed("model_load"):
            clock.now += 3
            assert c.totals() == {"startup": 2, "score_before": 1, "model_load": 3}
        clock.now += 4
    with c.timed("model_load"):
        clock.now += 1
    totals = c.totals()
    assert totals == {"startup": 2, "score_before": 5, "model_load": 4}
    assert sum(totals.values()) == c.elapsed() == 11
    assert timing.since(totals, {"startup": 2, "score_before": 5}) == {"model_load": 4}
    assert timing.from_metrics(timing.metrics(totals)) == totals
    rows = timing.rows(totals)
    assert [r[0] for r in rows] == ["start-up (imports, stores)", "model load", "scoring before",
                                    "total"]
    assert rows[2][1:] == ["5.0", "45%"] and rows[3][1:] == ["11.0", "100%"]
    assert timing.rows({**totals, "total": 20})[2][1:] == ["5.0", "25%"]  # a logged total
    clock.now += 3  # in no phase: Optuna, waiting for workers
    end = c.command_times()
    assert end["other"] == 3 and sum(end.values()) == c.elapsed() == 14
    assert c.closing_metrics() == {"time/report": 0.0, "time/other": 3, "time/total": 14}
