"""Using a logged run again: `harness rerun RUN_ID` (train once more from its manifest),
`harness report RUN_ID` (its report rebuilt from MLflow alone) and `harness export RUN_ID
OUT_DIR` (its model, ready to use elsewhere; optionally registered in the MLflow Model
Registry)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from harness.eval import scoring
from harness.eval.results import read_results
from harness.core import ledger, timing
from harness.pipeline import manifest, prepared, run
from harness.config import recipe
from harness.core.errors import HarnessError, say


def logged_recipe(uri: str, run_id: str) -> tuple[str, dict, recipe.Recipe]:
    """(run id, manifest, recipe) of a logged run, its recipe pointed at the store at `uri`.
    A trial's recipe is its own variant; its sweep file is not needed to train it again."""
    run_id, m = manifest.fetch(uri, run_id)
    data = m["recipe"]
    data["tracking"] = dict(data.get("tracking") or {}, uri=uri)
    data["sweep"] = dict(data.get("sweep") or {}, space=None)
    return run_id, m, recipe.build(data, f"runs:/{run_id}")


def rerun(uri: str, run_id: str) -> dict:
    """Train the logged run's recipe again into the same experiment, tagged harness.rerun_of,
    and compare every after/ metric with the original's."""
    from harness.tracking.tracker import Tracker
    run_id, m, r = logged_recipe(uri, run_id)
    for d in manifest.differences(m):
        say(f"differs from the logged run: {d}")
    tracker = Tracker(r)
    logged = tracker.read_run(run_id)
    # a sweep trial was scored on the objective set's selection and held-out parts: so is its rerun
    outcome, path = run.train_and_report(r, tracker, tags={"harness.rerun_of": run_id},
                                         name=f"{r.name}-rerun",
                                         select=logged.tags.get("harness.kind") == "trial")
    original = logged.metrics
    rows = {m.key: (original.get(f"after/{m.key}"), m.after) for m in outcome.comparison}
    return {"run_id": outcome.run_id, "of": run_id, "report": str(path), "after": rows}


def export(uri: str, run_id: str, out_dir: str, merge: bool = False,
           register: str | None = None) -> dict:
    """The run's adapter (with the tokenizer and its chat template), or with --merge the base
    with the adapter merged in, saved with save_pretrained so that
    AutoModelForCausalLM.from_pretrained(out_dir) loads it."""
    from harness.tracking.tracker import Tracker
    run_id, m, r = logged_recipe(uri, run_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise HarnessError(f"{out_dir} exists and is not empty", file="OUT_DIR")
    tracker = Tracker(r)
    prep = prepared.prepare(r, tracker, with_data=False)
    with tempfile.TemporaryDirectory() as d:
        adapter = tracker.fetch_adapter(run_id, d)
        staged = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None,
                                       prefix=f".{out.name}-"))
        if merge or r.adapter.type == "none":
            from peft import PeftModel
            base = prep.load_model()
            model = PeftModel.from_pretrained(base, adapter).merge_and_unload() \
                if (Path(adapter) / "adapter_config.json").is_file() else base
            model.save_pretrained(staged)
        else:
            if prep.init_adapter:
                say("this adapter was trained on the base with model.init_from merged in; "
                    "use --merge for a model that stands alone")
            for f in Path(adapter).iterdir():
                if f.is_file() and not f.name.startswith("tokenizer"):
                    shutil.copy2(f, staged / f.name)
        prep.tok.save_pretrained(staged)
    if out.exists():
        out.rmdir()
    staged.replace(out)  # a half-written export is never left at OUT_DIR
    result = {"run_id": run_id, "path": str(out), "merged": bool(merge)}
    if register:  # the run's own LoggedModel, or the merged export logged as one
        from harness.tracking.reader import MODEL_TAG
        model_id = None if merge else tracker.read_run(run_id).tags.get(MODEL_TAG)
        result["version"] = tracker.register(run_id, register, model_id=model_id,
                                             folder=str(out))
    return result


def rebuild_report(uri: str, run_id: str) -> Path:
    """reports/<name>/report.md and its PNGs from what MLflow holds, logged to the run again.
    A sweep's report needs its Optuna study (the storage its trials' recipe names)."""
    from harness.report import markdown
    from harness.study import sweep
    from harness.tracking.tracker import Tracker
    trial_run, _, r = logged_recipe(uri, run_id)  # one line if there is no such run
    tracker = Tracker(r)
    logged = tracker.read_run(run_id)
    tags = logged.tags
    if tags.get("harness.kind") == "sweep":
        summary, images = sweep.summarize(r, tags["harness.study"])
        before = scoring.results_from_json(
            tracker.load_json(run_id, "eval/start.json")["before"])
        path = markdown.write_sweep(r, summary, before, tracker, images,
                                  timing.from_metrics(logged.metrics),
                                  ledger.from_metrics(logged.metrics),
                                  machine=logged_machine(tracker, trial_run))
    else:
        saved = read_results(tracker, trial_run)
        if not saved or saved.before is None or saved.comparison is None:
            raise HarnessError(f"run {trial_run!r} has no eval/results.json with before and "
                               "after (made by an older harness?)", file="RUN_ID")
        info = tracker.read_run(trial_run)
        outcome = run.Outcome(trial_run, saved.comparison, saved.after,
                              info.tags.get("harness.adapter_dir", ""),
                              {k: v for k, v in info.metrics.items() if k.startswith("train_")},
                              timing.from_metrics(info.metrics),
                              work=ledger.from_metrics(info.metrics))
        name = r.name if tags.get("harness.kind") == "train" else f"{r.name}-{info.name}"
        path = markdown.write_run(r, outcome, saved.before, tracker, name,
                                  machine=logged_machine(tracker, trial_run))
    tracker.log_artifacts(str(path.parent), "report", run_id=run_id)
    return path


def logged_machine(tracker, run_id: str) -> str | None:
    """Where a logged run ran, from its manifest (the GPU's name, else the platform), so a
    rebuilt report names the machine that made its figures, not the one rebuilding it."""
    device = (tracker.load_json(run_id, "manifest.json") or {}).get("device") or {}
    where = device.get("gpu") or device.get("platform")
    return f"{where} ({device.get('device/dtype', '?')})" if where else None
