"""A run's eval/results.json as one type, RunResults (the tuned side's per-example results, the
starting side's, the comparison), with the one writer and the one reader of the file. The
tracker is the transport (its log_dict and load_json): eval does not import tracking."""
from __future__ import annotations

from dataclasses import dataclass

from harness.core.errors import HarnessError
from harness.eval.comparison import Comparison
from harness.eval.scoring import SetResult, results_from_json, results_to_json

PATH = "eval/results.json"
#: 2: the comparison as Comparison.to_json. 1 (files without "version"): the comparison as a dict
#: of dicts, side -> metric key -> value (Comparison.from_sides)
VERSION = 2


@dataclass
class RunResults:
    """What a run scored: `after` (the tuned model, or harness eval's model, or one model of
    harness compare), `before` (the starting model; None where the run scored one side) and
    their comparison (None where there was nothing to compare)."""
    after: dict[str, SetResult]
    before: dict[str, SetResult] | None = None
    comparison: Comparison | None = None
    version: int = VERSION  # the version the file was read from; written as VERSION

    def to_json(self) -> dict:
        out = {"version": VERSION, "after": results_to_json(self.after)}
        if self.before is not None:
            out["before"] = results_to_json(self.before)
        if self.comparison is not None:
            out["comparison"] = self.comparison.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict) -> RunResults:
        version = d.get("version", 1)
        if version not in (1, VERSION):
            raise HarnessError(f"{PATH} of version {version}: this harness reads versions 1 to "
                               f"{VERSION} (a newer harness wrote it)")
        cmp = d.get("comparison")
        comparison = None if cmp is None else \
            Comparison.from_sides(cmp) if version == 1 else Comparison.from_json(cmp)
        return cls(results_from_json(d["after"]),
                   results_from_json(d["before"]) if "before" in d else None, comparison, version)


def write_results(tracker, results: RunResults, run_id: str | None = None) -> None:
    """Into the active run, or into `run_id` after it ended."""
    tracker.log_dict(results.to_json(), PATH, run_id=run_id)


def read_results(tracker, run_id: str | None) -> RunResults | None:
    """The run's results, or None where it has no such file (or no run id was given)."""
    saved = tracker.load_json(run_id, PATH) if run_id else None
    return None if saved is None else RunResults.from_json(saved)
