"""What a standard-sized lm-eval task costs inside the harness, against lm-eval run alone on the
same model, in the same call.

The task is lm-eval's own `gsm8k` config (5-shot, its filters and metric) on local files: GSM8K
rows from <shared>/data/gsm8k/train.jsonl, the last --docs of them as the test documents (1,319
by default: GSM8K's test size) and the rest as the few-shot pool, since the Hub is not
reachable. Both sides score the same model with the chat template off (lm-eval's default):

    harness  `python -m harness eval MODEL --recipe R`, R naming the task in eval.benchmarks
             (the model loaded once, lm-eval driving it): wall, time/benchmarks, documents
    peer     `python -m lm_eval --model hf --model_args pretrained=<folder> --tasks ...
             --batch_size auto`: what a user runs without the harness

    python bench/lm_eval_cost.py --shared ../shared [--model embedded:smollm2-135m-instruct]
        [--docs 1319]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def task_folder(shared: Path, docs: int, where: Path) -> Path:
    import lm_eval
    rows = (shared / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()
    (where / "pool.jsonl").write_text("\n".join(rows[:-docs]) + "\n")
    (where / "test.jsonl").write_text("\n".join(rows[-docs:]) + "\n")
    cfg = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/gsm8k/gsm8k.yaml").read_text())
    cfg.pop("tag", None)
    cfg.pop("dataset_name", None)
    cfg.update(task="gsm8k_local", dataset_path="json", dataset_kwargs={"data_files": {
        "train": str(where / "pool.jsonl"), "test": str(where / "test.jsonl")}})
    folder = where / "tasks"
    folder.mkdir()
    (folder / "gsm8k_local.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def timed(cmd: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    took = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"{cmd[:4]} failed:\n" + "\n".join(log.read_text().splitlines()[-20:]))
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--docs", type=int, default=1319)
    args = ap.parse_args()
    import mlflow

    from harness import models
    from harness.config import recipe
    where = Path(tempfile.mkdtemp(prefix="lm_eval_cost-"))
    tasks = task_folder(Path(args.shared), args.docs, where)
    r = {"name": "cost", "tracking": {"uri": f"sqlite:///{where}/mlflow.db",
                                      "log_evaluations": "none"},
         "reports_dir": str(where / "reports"),
         "eval": {"goldensets": [], "forgetting_guard": None, "benchmarks": [
             {"task": "gsm8k_local", "include_path": str(tasks), "chat_template": False}]}}
    (where / "recipe.yaml").write_text(yaml.safe_dump(r))
    ours = timed([sys.executable, "-m", "harness", "eval", args.model, "--recipe",
                  str(where / "recipe.yaml")], where / "harness.log")
    client = mlflow.MlflowClient(f"sqlite:///{where}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("cost").experiment_id])[0]
    m = run.data.metrics
    keys = sorted(k for k in m if k.startswith("gsm8k_local/"))
    print(f"model {args.model}; gsm8k_local: {args.docs} documents, 5-shot, 2 filters")
    print(f"harness eval: wall {ours:.1f} s; time/benchmarks {m.get('time/benchmarks', 0):.1f} s,"
          f" time/model_load {m.get('time/model_load', 0):.1f} s; documents "
          f"{m.get('work/benchmark_documents', 0):.0f}")
    print("harness metrics: " + ", ".join(f"{k} {m[k]:.4f}" for k in keys), flush=True)
    folder = models.resolve(recipe.ModelSpec(name=args.model))
    peer = timed([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                  f"pretrained={folder},dtype=bfloat16", "--tasks", "gsm8k_local",
                  "--include_path", str(tasks), "--batch_size", "auto", "--output_path",
                  str(where / "peer"), "--log_samples"], where / "peer.log")
    found = sorted((where / "peer").rglob("results_*.json"))
    theirs = json.loads(found[-1].read_text())["results"]["gsm8k_local"] if found else {}
    print(f"lm_eval alone: wall {peer:.1f} s; " + ", ".join(
        f"{k} {v:.4f}" for k, v in theirs.items() if isinstance(v, float) and "stderr" not in k))
    print(f"ratio (lm_eval alone / harness eval, wall): {peer / ours:.2f}x")


if __name__ == "__main__":
    main()
