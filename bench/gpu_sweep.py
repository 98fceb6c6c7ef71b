"""A sweep whose trials train on several GPUs (`processes_per_trial` in the sweep file), against
the same study with one GPU a trial, and with `--workers 2` (a trial on each GPU at once), on
the GPU machine.

The workload is bench/train_speed.py's (GSM8K rows as chat, SmolLM2-135M's shape with random
weights, LoRA r=16, 1 epoch), swept over two learning rates and scored on the first golden
problems of goldensets/math.yaml; each arm is `harness sweep` in a subprocess with its own
stores (SQLite; the workers arm: a journal file and `harness server` on SQLite, as parallel
workers need). A warm-up first imports the stack once, so no arm pays for compiling bytecode.
Prints, per arm, the wall time, and per trial its MLflow status, world size, effective batch,
whether the ranks ended in sync and the Trainer's train_runtime; after each arm, where the time
went: the sweep run's `time/*` metrics (phase, seconds, share of time/total) and each trial's
model load, training, scoring after and logging.

    python bench/gpu_sweep.py --shared ../shared [--arms 2 1 w2] [--n-trials 2] [--rows 4000]
        [--epochs 1]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import random_model, server
from train_speed import workload

from harness.core import timing


def warm_up() -> float:
    """Import what every arm imports, once: the wheels are installed without bytecode."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, trl, peft, mlflow, optuna, "
                    "harness.study.sweep, harness.train, harness.tracking, harness.eval.scoring; "
                    "torch.cuda.is_available() and torch.zeros(1, device='cuda')"], check=True)
    return time.perf_counter() - t


def arm(name: str, n_trials: int, model: str, shared: str, root: Path, rows: int,
        examples: int, trace: bool, epochs: int = 1) -> dict:
    """`name`: GPUs a trial ("2", "1"), or "wN": N workers of one GPU each."""
    import mlflow
    root.mkdir(parents=True)
    workers = int(name[1:]) if name.startswith("w") else 1
    per_trial = 1 if workers > 1 else int(name)
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({
        "n_trials": n_trials, "sampler": "grid", "seed": 0, "processes_per_trial": per_trial,
        "params": {"trainer.learning_rate": {"type": "categorical", "choices": [1e-4, 2e-4]}}}))
    r = workload("harness", model, str(Path(shared).resolve()), rows)
    d = r.to_dict()
    # scored on the shipped math golden set (gsm8k's comes from the Hub)
    d["eval"]["goldensets"] = [str(Path("goldensets/math.yaml").resolve())]
    d["sweep"].update(space=str(space), storage=f"sqlite:///{root}/optuna.db",
                      objective="math/numeric_accuracy")
    d["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db"}
    served = None
    if workers > 1:
        served = server(root, 5123)
        d["sweep"]["storage"] = f"journal:///{root}/study.log"
        d["tracking"] = {"uri": "http://127.0.0.1:5123"}
    d["eval"].update(max_examples=examples, batch_size=examples)
    d["trainer"]["num_train_epochs"] = epochs  # longer trials: what multi-GPU trials are for
    d.update(output_dir=str(root / "out"), reports_dir=str(root / "reports"))
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(path), "--workers",
                             str(workers)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    said = [f"{time.perf_counter() - t:6.1f}s {line.rstrip()}" for line in proc.stderr
            if line.startswith(("[harness]", "error", "Traceback", "interrupted",
                                "{'train_runtime")) or "exitcode" in line]
    code = proc.wait()
    wall = time.perf_counter() - t
    if code or trace:
        print(f"arm {name}:", *said[-60:], sep="\n", flush=True)
    if code:
        if served:
            served.terminate()
        sys.exit(f"arm {name}: exit {code}")
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    exp = client.get_experiment_by_name(d["name"])
    trials = []
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time"]):
        if "harness.trial" not in run.data.tags:
            continue
        m, p = run.data.metrics, run.data.params
        trials.append({"trial": run.data.tags["harness.trial"], "status": run.info.status,
                       "world_size": int(p.get("distributed/world_size", 1)),
                       "effective_batch": p.get("distributed/effective_batch_size",
                                                p.get("per_device_train_batch_size")),
                       "in_sync": m.get("distributed/in_sync"),
                       "train_runtime_s": round(m.get("train_runtime", 0), 1),
                       "train_loss": round(m.get("train_loss", 0), 4),
                       "times": timing.from_metrics(m), "parent": run.data.tags.get(
                           "mlflow.parentRunId")})
    where_the_time_went(name, wall, client, trials)
    if served:
        served.terminate()
        served.wait()
    return {"arm": name, "workers": workers, "processes_per_trial": per_trial,
            "wall_s": round(wall, 1), "trials": trials}


def where_the_time_went(name: str, wall: float, client, trials: list[dict]) -> None:
    """The sweep (parent) run's time/* metrics, then each trial's main phases."""
    parents = {t["parent"] for t in trials} - {None}
    print(f"\nWhere the time went, arm {name} (sweep wall {wall:.1f} s):")
    for parent in parents:
        print(f"\nsweep run {parent}\n| phase | seconds | share of time/total |\n|---|---|---|")
        for row in timing.rows(timing.from_metrics(client.get_run(parent).data.metrics)):
            print("| " + " | ".join(row) + " |")
    cols = ("model_load", "train", "score_after", "logging")
    print(f"\n| trial | {' s | '.join(cols)} s | total of these s |\n|---|---|---|---|---|---|")
    for t in trials:
        secs = [t["times"].get(c, 0.0) for c in cols]
        print(f"| {t['trial']} | " + " | ".join(f"{s:.1f}" for s in secs) + f" | {sum(secs):.1f} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--n-trials", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--examples", type=int, default=16, help="golden problems scored")
    ap.add_argument("--arms", nargs="+", help="each arm: GPUs a trial (2, 1) or wN, N workers "
                    "of one GPU each (default: --processes, then 1)")
    ap.add_argument("--trace", action="store_true", help="print what each sweep said, timed")
    ap.add_argument("--epochs", type=int, default=1, help="epochs a trial trains")
    args = ap.parse_args()
    print(f"warm-up (imports, CUDA): {warm_up():.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as d:
        model = random_model(f"{args.shared}/anchors/smollm2-135m", f"{d}/model")
        arms = [arm(n, args.n_trials, model, args.shared, Path(d) / f"arm{n}", args.rows,
                    args.examples, args.trace, args.epochs)
                for n in args.arms or (str(args.processes), "1")]
    print("\n| workers | GPUs a trial | sweep wall s | trial | MLflow status | world size | "
          "effective batch | ranks in sync | train s | train loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        for t in a["trials"]:
            print(f"| {a['workers']} | {a['processes_per_trial']} | {a['wall_s']} | {t['trial']} | "
                  f"{t['status']} | "
                  f"{t['world_size']} | {t['effective_batch']} | {t['in_sync']} | "
                  f"{t['train_runtime_s']} | {t['train_loss']} |")


if __name__ == "__main__":
    main()
