"""Golden-set metrics as `evaluate` modules shipped in the package.

Each folder here is an evaluate metric script (`<name>/<name>.py`), loaded with the library's own
`evaluate.load(path)`, which works offline (`evaluate.load("rouge")` needs the Hub). The folder
names fill the registry (METRICS), so a lookup needs no heavy import.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from harness.core.registry import Registry

HERE = Path(__file__).parent


#: metric name -> (its module's folder, fixed arguments): every folder, and the names served by
#: one module with fixed arguments (rouge1 ... rougeLsum: `rouge`)
METRICS: Registry[tuple[str, dict]] = Registry("metric")
for _folder in sorted(p.name for p in HERE.iterdir() if (p / f"{p.name}.py").is_file()):
    if _folder != "rouge":
        METRICS.register(_folder)((_folder, {}))
for _t in ("1", "2", "L", "Lsum"):
    METRICS.register(f"rouge{_t}")(("rouge", {"rouge_type": f"rouge{_t}"}))


def check(name: str, **where) -> str:
    METRICS.get(name, **where)
    return name


def module_and_args(name: str) -> tuple[str, dict]:
    return METRICS.get(name)


@functools.cache
def _load_module(module: str):
    import evaluate
    return evaluate.load(str(HERE / module))


@dataclass(frozen=True)
class Info:
    """What a metric's module says of it, known without importing `evaluate`."""
    features: frozenset[str]  # the input columns it takes
    higher_is_better: bool
    binary: bool  # 0/1 per-example scores


def info(name: str) -> Info:
    """A metric's Info. Cached per version of the metric's source, so `harness validate` can
    check a golden set's metrics and infer a sweep's direction without importing evaluate (5 s)."""
    import hashlib
    import json

    from harness.core.files import atomic_write
    from harness.models import cache_dir
    module = module_and_args(name)[0]
    digest = hashlib.sha256((HERE / module / f"{module}.py").read_bytes()
                            + (HERE / "base.py").read_bytes()).hexdigest()[:16]
    cache = cache_dir() / "metrics" / f"{module}-{digest}-info.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
    else:
        m = _load_module(module)
        saved = {"features": sorted(m.features), "higher_is_better": bool(m.higher_is_better),
                 "binary": bool(m.binary)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, json.dumps(saved))  # a concurrent reader never sees half a file
    return Info(frozenset(saved["features"]), saved["higher_is_better"], saved["binary"])


def features(name: str) -> set[str]:
    """The input columns a metric takes (info)."""
    return set(info(name).features)


def load(name: str):
    """The metric as an `evaluate.EvaluationModule` (its class is a HarnessMetric)."""
    return _load_module(module_and_args(name)[0])


def compute(name: str, columns: dict, args: dict | None = None) -> dict:
    """{name: value, 'scores': per-example} for the inputs among `columns` the metric takes."""
    module, fixed = module_and_args(name)
    metric = _load_module(module)
    out = metric.compute(per_example=True, **{k: columns[k] for k in metric.features},
                         **fixed, **(args or {}))
    return {name: out[metric.name], "scores": out["scores"]}


def score_example(name: str, columns: dict, args: dict | None = None) -> float:
    """One example's score (`columns`: each input as a one-item list), by the metric's own
    per-example scoring: what compute()'s 'scores' holds for that example."""
    module, fixed = module_and_args(name)
    metric = _load_module(module)
    return float(metric.score_examples(**{k: columns[k] for k in metric.features}, **fixed,
                                       **(args or {}))[0])
