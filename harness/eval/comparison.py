"""The before/after comparison of two scorings of the same golden sets: a MetricChange per
metric key, the Comparison that holds them in order, compare() that builds one from two sets of
SetResults, the one way a delta is written as text, and their JSON."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.eval import metrics, stats
from harness.eval.scoring import SetResult, flat_metrics


@dataclass(frozen=True)
class MetricChange:
    """One metric key ('math/numeric_accuracy') before and after: the delta with its paired
    bootstrap 95% CI, the paired test's p-value and its Holm adjustment, the number of pairs,
    and for a 0/1 metric the examples fixed and broken (in the metric's direction: for a
    lower-is-better metric, fixed means it went down). Files written before the harness logged
    some of these leave them None."""
    key: str
    before: float
    after: float
    delta: float
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    test: str | None = None
    n: int | None = None
    fixed: int | None = None  # None: not a 0/1 metric
    broken: int | None = None
    fixed_ids: tuple[int, ...] | None = None  # rows, from 0; None: the file did not keep them
    broken_ids: tuple[int, ...] | None = None

    @property
    def golden_set(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def counts_changes(self) -> bool:
        """A 0/1 metric, whose examples are counted fixed and broken."""
        return self.fixed is not None


#: MetricChange's fields that are one number (or text) per key: the sides of the dict of dicts
#: the harness wrote into eval/results.json before version 2, and the MLflow metric prefixes
SIDES = ("before", "after", "delta", "ci_low", "ci_high", "p_value", "p_holm", "test", "n")


@dataclass(frozen=True)
class Comparison:
    """Every metric key's MetricChange, in the order scoring produced them (golden set by golden
    set, each set's metrics in its manifest's order), and `base`: the base model's values where
    the run started from another run's model (model.init_from), else None."""
    metrics: tuple[MetricChange, ...] = ()
    base: dict[str, float] | None = None

    def __iter__(self):
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: str) -> MetricChange:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: str) -> MetricChange | None:
        return next((m for m in self.metrics if m.key == key), None)

    def keys(self) -> list[str]:
        return [m.key for m in self.metrics]

    def side(self, name: str) -> dict[str, float]:
        """One field of every metric that has it (`name` in SIDES, or 'base'), by key: what the
        run logs as MLflow metrics `<name>/<key>`."""
        if name == "base":
            return dict(self.base or {})
        return {m.key: getattr(m, name) for m in self.metrics if getattr(m, name) is not None}

    def after_values(self) -> dict[str, float]:
        return self.side("after")

    def before_values(self) -> dict[str, float]:
        return self.side("before")

    def with_holm(self, adjusted: dict[str, float]) -> Comparison:
        """The same with each key's p_holm from `adjusted` (an adjustment across a larger family
        of tests: harness compare's every pair)."""
        return dataclasses.replace(self, metrics=tuple(
            dataclasses.replace(m, p_holm=adjusted[m.key]) for m in self.metrics))

    def only(self, keys) -> Comparison:
        """The metrics (and base values) of `keys`, each keeping its p_holm: the adjustment
        across every key stays what it was."""
        keys = set(keys)
        return Comparison(tuple(m for m in self.metrics if m.key in keys),
                          None if self.base is None else
                          {k: v for k, v in self.base.items() if k in keys})

    def to_json(self) -> dict:
        return {"metrics": [dataclasses.asdict(m) for m in self.metrics], "base": self.base}

    @classmethod
    def from_json(cls, d: dict) -> Comparison:
        def change(m: dict) -> MetricChange:
            ids = {k: tuple(m[k]) for k in ("fixed_ids", "broken_ids") if m.get(k) is not None}
            return MetricChange(**{**m, **ids})
        return cls(tuple(change(m) for m in d["metrics"]), d.get("base"))

    @classmethod
    def from_sides(cls, d: dict) -> Comparison:
        """The dict of dicts eval/results.json held before version 2 (side -> key -> value,
        'changes' -> key -> {fixed, broken, fixed_ids, broken_ids}), some sides missing in the
        oldest files."""
        changes = d.get("changes", {})

        def change(key: str) -> MetricChange:
            ch = changes.get(key, {})
            ids = {k: tuple(ch[k]) for k in ("fixed_ids", "broken_ids") if k in ch}
            return MetricChange(key, **{s: d[s][key] for s in SIDES if key in d.get(s, {})},
                                fixed=ch.get("fixed"), broken=ch.get("broken"), **ids)
        return cls(tuple(change(k) for k in d["after"]), d.get("base"))


def compare(before: dict[str, SetResult], after: dict[str, SetResult],
            base: dict[str, SetResult] | None = None) -> Comparison:
    """Each metric of `after`'s golden sets against `before`'s same examples: the paired delta
    and test (harness.eval.stats), Holm's adjustment across all the keys compared, and for 0/1
    metrics the examples fixed and broken. `base`: the base model's results, kept as values."""
    changes = []
    for name, res in after.items():
        prev = before[name]
        for metric_name in res.metrics:
            changes.append(_change(f"{name}/{metric_name}", metric_name, prev, res))
    holm = stats.holm({m.key: m.p_value for m in changes})
    return Comparison(tuple(dataclasses.replace(m, p_holm=holm[m.key]) for m in changes),
                      flat_metrics(base) if base else None)


def _change(key: str, metric_name: str, prev: SetResult, res: SetResult) -> MetricChange:
    metric = res.metric(metric_name)
    args = {**metrics.module_and_args(res.modules.get(metric_name, metric_name))[1],
            **res.metric_args.get(metric_name, {})}
    feats = list(metric.features)
    b_scores = [e[metric_name] for e in prev.examples]
    a_scores = [e[metric_name] for e in res.examples]
    d = stats.paired(metric, args, b_scores, a_scores, {k: prev.columns[k] for k in feats},
                     {k: res.columns[k] for k in feats})
    counted = {}
    if metric.binary:
        up = metric.higher_is_better
        pairs = list(enumerate(zip(b_scores, a_scores)))
        fixed = tuple(i for i, (x, y) in pairs if stats.better(up, x, y))
        broken = tuple(i for i, (x, y) in pairs if stats.better(up, y, x))
        counted = {"fixed": len(fixed), "broken": len(broken), "fixed_ids": fixed,
                   "broken_ids": broken}
    return MetricChange(key, **d.as_dict(), n=len(res.examples), **counted)


def delta_text(m: MetricChange, *, labelled: bool = False, p: bool = False) -> str:
    """The delta with its 95% CI, as every report and terminal line writes it: '+0.4 [+0.1,
    +0.6]', labelled '+0.4, 95% CI [+0.1, +0.6]' (no CI where the file kept none); with `p`,
    the paired test's p-value and its Holm adjustment after it: ', p=0.01, Holm p=0.02'."""
    text = f"{m.delta:+.4g}"
    if m.ci_low is not None and m.ci_high is not None:
        text += f"{', 95% CI' if labelled else ''} [{m.ci_low:+.3g}, {m.ci_high:+.3g}]"
    if p and m.p_value is not None:
        text += f", p={stats.format_p(m.p_value)}"
    if p and m.p_holm is not None:
        text += f", Holm p={stats.format_p(m.p_holm)}"
    return text


def change_line(m: MetricChange) -> str:
    """One metric's before -> after on a terminal line: 'a/x: 0.1 -> 0.5 (+0.4, 95% CI [+0.1,
    +0.6], p=0.01, Holm p=0.02)'."""
    return f"{m.key}: {m.before:.4g} -> {m.after:.4g} ({delta_text(m, labelled=True, p=True)})"
