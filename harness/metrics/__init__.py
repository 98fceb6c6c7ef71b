"""Golden-set metrics as `evaluate` modules shipped in the package.

Each folder here is an evaluate metric script (`<name>/<name>.py`), loaded with the library's own
`evaluate.load(path)`, which works offline (`evaluate.load("rouge")` needs the Hub). The folder
names are the registry, so a lookup needs no heavy import.
"""
from __future__ import annotations

import functools
from pathlib import Path

from harness.errors import HarnessError, did_you_mean

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(p.name for p in HERE.iterdir() if (p / f"{p.name}.py").is_file())


def check(name: str, **where) -> str:
    if name not in names():
        raise HarnessError(f"unknown metric {name!r}{did_you_mean(name, names())} "
                           f"(known: {', '.join(names())})", **where)
    return name


@functools.cache
def load(name: str):
    """The metric as an `evaluate.EvaluationModule` (its class is a HarnessMetric)."""
    import evaluate
    return evaluate.load(str(HERE / check(name)))
