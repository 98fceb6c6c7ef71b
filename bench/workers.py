"""Parallel workers on one machine: trials per hour with N workers against one, and no duplicate
or lost trial.

Runs the same study from scratch twice through `harness sweep` (a subprocess each), once with
--workers 1 and once with --workers N, on a journal-file Optuna storage and the MLflow tracking
URI given (several processes need a server or a database: PostgreSQL here). Threads as a user
gets them: one worker takes torch's default (a thread per core), N workers on a CPU each a share
of the cores (harness.study.sweep sets OMP_NUM_THREADS). The model is a small Llama built from
SmolLM2's config (4 layers, hidden 256, its 49k vocabulary), trained 16 steps a trial on the
built-in math rows and scored on 16 golden problems.

    createdb harness_bench
    python bench/workers.py --tracking "postgresql+psycopg2:///harness_bench?host=/var/run/postgresql" \
        [--n-trials 8] [--workers 2]

Prints wall time end to end (start-up, base scoring, worker start-up included) and the trial
span (first trial's start to last trial's end, from the MLflow runs), each as trials per hour.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

SPACE = {"n_trials": 8, "sampler": "random", "seed": 0, "params": {
    "trainer.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    "adapter.r": {"type": "categorical", "choices": [4, 8, 16]}}}


def small_model(config_dir: str, out: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    cfg = AutoConfig.from_pretrained(config_dir)
    cfg.update({"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 768,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def arm(workers: int, n_trials: int, model: str, tracking: str, root: Path) -> dict:
    import mlflow
    import optuna

    from harness.study import storage
    from harness.config.recipe import SweepFile
    name = f"workers-bench-{workers}-{uuid.uuid4().hex[:6]}"
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    recipe = {
        "name": name, "model": {"name": model}, "adapter": {"r": 8, "alpha": 16},
        "data": {"train": "builtin:math", "builtin_rows": 128},
        "trainer": {"max_steps": 16, "per_device_train_batch_size": 8, "max_length": 128},
        "eval": {"goldensets": ["goldensets/math.yaml"], "max_examples": 16, "batch_size": 16,
                 "max_new_tokens": 24, "forgetting_guard": None},
        "sweep": {"space": str(root / "space.yaml"), "objective": "math/numeric_accuracy"},
        "tracking": {"uri": tracking},
        "output_dir": str(root / "out"), "reports_dir": str(root / "reports"),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    url = f"journal:///{root}/{name}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", str(path), "--workers",
                           str(workers), "--n-trials", str(n_trials), "--storage", url], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"--workers {workers} failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t
    study = optuna.load_study(study_name=name, storage=storage.open_storage(
        url, SweepFile.model_validate(SPACE)))
    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              "tags.`harness.kind` = 'trial'")
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    numbers = [int(r.data.tags["harness.trial"]) for r in runs]
    return {"workers": workers, "wall_s": round(wall, 1), "span_s": round(span, 1),
            "states": sorted(t.state.name for t in study.trials),
            "trial_runs": len(runs), "distinct_trials": len(set(numbers)),
            "run_status": sorted({r.info.status for r in runs}),
            "distinct_params": len({tuple(sorted(t.params.items())) for t in study.trials}),
            "workers_seen": len({t.user_attrs.get("worker") for t in study.trials})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking", required=True, help="an MLflow server URL or database URI")
    ap.add_argument("--config", default="../shared/anchors/smollm2-135m")
    ap.add_argument("--n-trials", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        model = small_model(args.config, str(root / "model"))
        rows = [arm(w, args.n_trials, model, args.tracking, root) for w in (1, args.workers)]
    for r in rows:
        print(r)
    one, many = rows
    for what in ("wall_s", "span_s"):
        print(f"{what}: {one[what]} s with 1 worker, {many[what]} s with {args.workers}: "
              f"{3600 * args.n_trials / one[what]:.0f} vs {3600 * args.n_trials / many[what]:.0f}"
              f" trials/hour = {one[what] / many[what]:.2f}x")
    ok = all(r["states"] == ["COMPLETE"] * args.n_trials and r["trial_runs"] == args.n_trials
             and r["distinct_trials"] == args.n_trials and r["run_status"] == ["FINISHED"]
             and r["distinct_params"] == args.n_trials for r in rows)
    print("no duplicate or lost trial" if ok else "DUPLICATE OR LOST TRIALS")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
