"""The reproducibility manifest every run carries (`manifest.json`), and reading it back for
`harness rerun`: the resolved recipe and its hash, git commit and dirty flag, package versions,
device, seeds, and a fingerprint of the training data and of each golden set. The data and the
golden sets are also logged as MLflow dataset inputs, so the UI's Datasets column shows them."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness.core.errors import HarnessError

PACKAGES = ("trl-harness", "trl", "transformers", "torch", "peft", "accelerate", "datasets",
            "mlflow", "optuna", "evaluate", "bitsandbytes", "liger-kernel")
FILE = "manifest.json"


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_state(where: str = ".") -> dict:
    """Commit and dirty flag of the repository holding `where` (the recipe's folder)."""
    def git(*args):
        return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True,
                              timeout=10)
    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode:
        return {}
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return {"commit": head.stdout.strip(), "dirty": bool(dirty)}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def examples_sha256(g) -> str:
    """The golden set's examples as scored (after offset, limit and templating)."""
    payload = json.dumps([g.prompts, g.references, g.chosen, g.rejected], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def build(prep) -> dict:
    import torch
    r = prep.recipe
    where = str(Path(r.source).parent) if Path(r.source).is_file() else "."
    device = {**prep.plan.as_params(), "platform": platform.platform(),
              "torch_threads": torch.get_num_threads()}
    if prep.plan.device == "cuda":
        device["gpu"] = torch.cuda.get_device_name()
    # a set cut from the training data has no manifest file (its path is data.train's)
    goldens = {g.name: {"manifest": g.path, "manifest_sha256": file_sha256(g.path)
                        if Path(g.path).is_file() else None,
                        "source": g.manifest.source, "examples": len(g.prompts),
                        "examples_sha256": examples_sha256(g)} for g in prep.goldens}
    return {"recipe": r.to_dict(), "recipe_hash": r.fingerprint(), "source": r.source,
            "git": git_state(where), "packages": _versions(), "device": device,
            "command": " ".join(sys.argv),
            "seeds": {"recipe": r.seed, "data": r.data.builtin_seed, "sweep": None},
            "data": {**prep.data_info, "source": r.data.train},
            "goldensets": goldens}


def log(tracker, prep, train_ds) -> dict:
    """manifest.json, git tags, and the data and golden sets as dataset inputs."""
    m = build(prep)
    tracker.log_dict(m, FILE)
    if m["git"]:
        tracker.set_tags({"harness.git_commit": m["git"]["commit"],
                          "harness.git_dirty": m["git"]["dirty"]})
    tracker.log_inputs(train_ds, prep.recipe.data.train, prep.goldens)
    return m


def fetch(uri: str, run_id: str) -> tuple[str, dict]:
    """(run id, manifest) of a run in the store at `uri`; a sweep's run gives its best trial's,
    a LoggedModel's id (m-...) the run that made it."""
    from harness.tracking.reader import Reader, redact
    store = Reader(uri)
    if run_id.startswith("m-"):
        made_by = store.model_run(run_id)
        if made_by is None:
            raise HarnessError(f"no MLflow LoggedModel {run_id!r} in {redact(uri)}", file="RUN_ID")
        run_id = made_by
    run = store.read_run(run_id)
    if run is None:
        raise HarnessError(f"no MLflow run {run_id!r} in {redact(uri)}", file="RUN_ID")
    best = run.tags.get("harness.best_run_id")
    if run.tags.get("harness.kind") == "sweep" and best:
        run_id = best
    import yaml
    # runs logged before manifests existed still have their resolved recipe.yaml
    for name, parse in ((FILE, json.loads),
                        ("recipe.yaml", lambda text: {"recipe": yaml.safe_load(text)})):
        text = store.artifact_text(run_id, name)
        if text is not None:
            return run_id, parse(text)
    raise HarnessError(f"MLflow run {run_id!r} has no {FILE} (runs of `harness train` and "
                       "sweep trials have one)", file="RUN_ID")


def differences(m: dict) -> list[str]:
    """What differs between the logged run's environment and this one."""
    out = []
    now = _versions()
    for name, was in m.get("packages", {}).items():
        if now.get(name) != was:
            out.append(f"{name} {was} -> {now.get(name, 'missing')}")
    here = git_state()
    if m.get("git", {}).get("commit") and here.get("commit") != m["git"]["commit"]:
        out.append(f"git commit {m['git']['commit'][:12]} -> {here.get('commit', 'none')[:12]}")
    if m.get("git", {}).get("dirty"):
        out.append("the logged run came from a dirty working tree")
    return out
