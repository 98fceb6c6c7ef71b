"""Data shipped inside the package, so a recipe in any folder finds it after `pip install`:
golden-set manifests (`harness/assets/goldensets/`) and sweep spaces (`harness/assets/sweeps/`).

A recipe names them `builtin:<name>` (`builtin:general_knowledge`, `builtin:sft_math`), or by
the path they have in a checkout (`goldensets/math.yaml`, `sweeps/sft_math.yaml`): a file at
that path under the working directory wins, else the shipped one is used. (In a checkout,
`goldensets/` and `sweeps/` at the root are links to these folders.)
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.core.errors import HarnessError, did_you_mean

ROOT = Path(__file__).resolve().parent.parent / "assets"
#: kind -> what the error messages call a file of it
KINDS = {"goldensets": "golden-set manifest", "sweeps": "sweep file"}
PREFIX = "builtin:"


def names(kind: str) -> list[str]:
    """Names of the shipped files of a kind (`math`, `general_knowledge`, ...)."""
    return sorted(p.stem for p in (ROOT / kind).glob("*.yaml"))


def locate(path: str, kind: str) -> str | None:
    """The file `path` names (see the module's note), or None when there is none. An unknown
    `builtin:` name is an error that lists the shipped ones."""
    if path.startswith(PREFIX):
        name = path[len(PREFIX):]
        if (ROOT / kind / f"{name}.yaml").is_file():
            return str(ROOT / kind / f"{name}.yaml")
        known = names(kind)
        raise HarnessError(f"unknown built-in {KINDS[kind]} {path!r}"
                           f"{did_you_mean(name, known)} (shipped: {', '.join(known)})")
    given = Path(path).expanduser()
    if given.is_file():
        return str(given)
    parts = Path(os.path.normpath(path)).parts
    if not given.is_absolute() and len(parts) == 2 and parts[0] == kind \
            and (ROOT / kind / parts[1]).is_file():
        return str(ROOT / kind / parts[1])
    return None


def same(a: str, b: str, kind: str) -> bool:
    """Whether two names in a recipe are the same file (`builtin:math`, `goldensets/math.yaml`)."""
    try:
        fa, fb = locate(a, kind), locate(b, kind)
    except HarnessError:
        return a == b
    return a == b or (fa is not None and fb is not None
                      and os.path.realpath(fa) == os.path.realpath(fb))
