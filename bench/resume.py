"""A sweep trial stopped by SIGTERM after its checkpoint, then the same command: how many steps
each part trained, and the resumed trial's result against the same trial never stopped (final
adapter weights, golden-set metrics, the loss curve in MLflow). Every command through the CLI,
as a user runs them; every store in a temp folder.

    python bench/resume.py [--model embedded:smollm2-135m-instruct] [--steps 24] [--rows 96]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def recipe(where: Path, name: str, args) -> str:
    (where / "one.yaml").write_text("n_trials: 1\nsampler: grid\nparams:\n"
                                    "  trainer.learning_rate: {type: categorical, "
                                    "choices: [2.0e-4]}\n")
    d = yaml.safe_load((ROOT / "recipes" / "sft_math.yaml").read_text())
    d.update(name=name, output_dir=str(where / "out"), reports_dir=str(where / "reports"),
             checkpoint_minutes=args.every)
    d["model"]["name"] = args.model
    d["data"]["builtin_rows"] = args.rows
    d["trainer"].update(max_steps=args.steps, per_device_train_batch_size=8)
    d["trainer"].pop("num_train_epochs", None)
    d["eval"].update(max_examples=args.examples)
    d["sweep"].update(space=str(where / "one.yaml"), storage=f"sqlite:///{where}/optuna.db")
    d["tracking"] = {"uri": f"sqlite:///{where}/mlflow.db", "log_evaluations": "none"}
    path = where / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


def harness(path: str) -> float:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "harness", "sweep", path], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    return time.perf_counter() - t


def trial_runs(where: Path, name: str):
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{where}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'",
                                      order_by=["attributes.start_time"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--every", type=float, default=0.25, help="checkpoint_minutes")
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file

    from harness.train import checkpoints
    base = Path(tempfile.mkdtemp(prefix="resume-"))
    (base / "ref").mkdir()
    (base / "stop").mkdir()
    ref_s = harness(recipe(base / "ref", "ref", args))

    path = recipe(base / "stop", "stop", args)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", path], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    while not list((base / "stop" / "out").glob(f"*/*/checkpoint-*/{checkpoints.STATE}")):
        if proc.poll() is not None:
            sys.exit("the trial ended before its first checkpoint: lower --every")
        time.sleep(0.05)
    time.sleep(1.0)  # a few steps past the checkpoint, as a preemption would be
    os.killpg(proc.pid, signal.SIGTERM)
    last = proc.stderr.read().strip().splitlines()[-1]
    code = proc.wait()
    stop_s = time.perf_counter() - t
    client, runs = trial_runs(base / "stop", "stop")
    killed = runs[0]
    ran = max((m.step for m in client.get_metric_history(killed.info.run_id, "loss")), default=0)
    resume_s = harness(path)
    client, runs = trial_runs(base / "stop", "stop")
    resumed = runs[-1]
    at = int(resumed.data.tags["harness.resumed_step"])
    _, ref_runs = trial_runs(base / "ref", "ref")
    ref = ref_runs[0]

    def weights(run):
        return load_file(str(Path(run.data.tags["harness.adapter_dir"]) /
                             "adapter_model.safetensors"))
    a, b = weights(resumed), weights(ref)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    same = all(torch.equal(a[k], b[k]) for k in a)
    curve = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")]
    key = "after/math/numeric_accuracy"
    print(f"model {args.model}, {args.steps} steps, checkpoint every {args.every} min")
    print(f"stopped run: exit {code} ({last!r}) after {stop_s:.1f} s; {ran} steps logged; "
          f"last checkpoint at step {at}")
    print(f"resumed run: trained steps {at + 1}-{args.steps} ({args.steps - at} steps, "
          f"{ran - at} of them again); {resume_s:.1f} s")
    print(f"never stopped: {ref_s:.1f} s")
    print(f"final adapter: {'bit-identical' if same else f'max abs diff {diff:.3g}'}; {key} "
          f"{resumed.data.metrics.get(key)} vs {ref.data.metrics.get(key)}; loss points "
          f"{len(curve)} for {len(set(curve))} steps (1-{max(curve)})")


if __name__ == "__main__":
    main()
