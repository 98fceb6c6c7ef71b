"""Where the time went: wall-clock seconds per phase of a command, logged as `time/<phase>`
MLflow metrics and shown as a table in every report, so a user sees what a run or a sweep spent
its time on without a benchmark.

Phases nest (a model load inside scoring): each second is counted once, in the innermost phase
running at the time, so the phases add up to the command's wall time. `startup` is the time
from the command's start (harness.commands.cli) to its first phase: imports, the tracking and
study stores. Each command's Clock is on its run context (harness.core.context).
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

#: phase -> what the report calls it, in the order a run goes through them
PHASES = {"startup": "start-up (imports, stores)", "data": "data preparation",
          "model_load": "model load", "score_before": "scoring before",
          "train": "training", "score_pruner": "pruner's golden slice (in training)",
          "score_after": "scoring after", "benchmarks": "lm-eval benchmarks (inside scoring)",
          "logging": "logging",
          "evaluations": "MLflow evaluation records (tracking.log_evaluations)", "report": "report",
          "other": "other (Optuna, waiting for workers, untimed)"}


#: the prefix of a phase's seconds on the writer thread, beside the command's (harness.core.beside)
BESIDE = "beside/"


class Clock:
    """One command's seconds per phase, from its start (on its run context)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first: float | None = None  # when the first phase began
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [phase, began, seconds of the phases inside it]
        # seconds of work done on the writer thread (harness.core.beside), per phase: they
        # overlap this clock's phases, so they are not among them and add nothing to the wall
        self.beside: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(self, phase: str):
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self._stack.append([phase, now, 0.0])
        try:
            yield
        finally:
            _, began, inner = self._stack.pop()
            spent = time.perf_counter() - began
            self.seconds[phase] += spent - inner
            if self._stack:
                self._stack[-1][2] += spent

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far, start-up included, and the phases still running so far."""
        now = time.perf_counter()
        out = defaultdict(float, self.seconds)
        for i, (phase, began, inner) in enumerate(self._stack):
            running_inside = now - self._stack[i + 1][1] if i + 1 < len(self._stack) else 0.0
            out[phase] += now - began - inner - running_inside
        out["startup"] = (self.first or now) - self.start
        return dict(out)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def command_times(self) -> dict[str, float]:
        """The command's seconds per phase so far, and `other`: what no phase covers (Optuna,
        a sweep's waiting for workers, the time metrics' own logging), so they add up to the
        wall."""
        times = self.totals()
        times["other"] = max(0.0, self.elapsed() - sum(times.values()))
        return times

    def closing_metrics(self) -> dict[str, float]:
        """What a command logs once its report is written: the report's and the untimed
        seconds, and time/total."""
        end = self.command_times()
        return {"time/report": end.get("report", 0.0), "time/other": end["other"],
                "time/total": self.elapsed(), **metrics(self.beside_times())}

    def beside_times(self) -> dict[str, float]:
        """The writer thread's seconds per phase, as `beside/<phase>` keys (see `rows`)."""
        return {f"{BESIDE}{k}": v for k, v in self.beside.items()}


def since(now: dict[str, float], mark: dict[str, float]) -> dict[str, float]:
    """Seconds per phase spent between two totals()."""
    return {k: v - mark.get(k, 0.0) for k, v in now.items() if v - mark.get(k, 0.0) > 0}


def metrics(times: dict[str, float]) -> dict[str, float]:
    return {f"time/{k}": v for k, v in times.items()}


def from_metrics(metrics_: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("time/"): v for k, v in metrics_.items() if k.startswith("time/")}


def rows(times: dict[str, float]) -> list[list]:
    """[phase, seconds, share] rows in PHASES order and a `total` row (the logged time/total
    where there is one, else the phases' sum), for a report's table; then the writer thread's
    phases (`beside/` keys), which overlap the others and are not in the total."""
    phases = {k: v for k, v in times.items() if k != "total" and not k.startswith(BESIDE)}
    total = times.get("total") or sum(phases.values()) or 1.0
    known = [k for k in PHASES if k in phases] + sorted(set(phases) - set(PHASES))
    beside = sorted(k for k in times if k.startswith(BESIDE))
    return [[PHASES.get(k, k), f"{phases[k]:.1f}", f"{100 * phases[k] / total:.0f}%"]
            for k in known] + [["total", f"{total:.1f}", "100%"]] + [
        [f"{PHASES.get(k.removeprefix(BESIDE), k)}, beside the work above", f"{times[k]:.1f}",
         "overlapped"] for k in beside]
