"""QLoRA (4-bit NF4) against LoRA in bf16, through the harness's own trainer path, on a GPU.

For each trainer (sft, dpo, reward) and each quantization (none, 4bit): build the recipe, load
the model with harness.models, train N steps with harness.train, and print peak GPU memory,
time per step and final loss. The model is SmolLM2-135M's shape with random weights (real
weights cannot travel to the GPU machine), built from a config folder.

    python bench/qlora.py --config ../shared/anchors/smollm2-135m [--steps 20] [--methods sft dpo]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import random_model


def measure(model_dir: str, method: str, quant: str, steps: int, gsm8k: str | None) -> dict:
    import torch

    from harness.data import trainset
    from harness import models
    from harness.config import recipe
    from harness.train import trainers
    sft_data = {"train": gsm8k, "max_rows": steps * 8} if gsm8k else {
        "train": "builtin:math", "builtin_rows": steps * 8}
    r = recipe.build({
        "name": f"bench-{method}-{quant}", "method": method,
        "model": {"name": model_dir, "quantization": quant},
        "data": sft_data if method == "sft" else {"train": "builtin:math_preferences",
                                                  "builtin_rows": steps * 8},
        "trainer": {"max_steps": steps, "per_device_train_batch_size": 8, "max_length": 512,
                    "logging_steps": 1},
    }, f"bench/{method}-{quant}")
    k = trainers.kind(r)
    plan = models.device_plan(r.model)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    tok = models.load_tokenizer(r.model)
    model = models.load_model(r.model, plan, task=k.task)
    weights = torch.cuda.memory_allocated() - base
    tr, _, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        res = trainers.train(r, model, tok, tr, None, plan, out)
        wall = time.perf_counter() - t
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    row = {"method": method, "quantization": quant, "dtype": plan.dtype,
           "weights_gib": round(weights / 2**30, 3),
           "peak_gib": round((torch.cuda.max_memory_allocated() - base) / 2**30, 3),
           "s_per_step": round(res.metrics["train_runtime"] / steps, 4),
           "wall_s": round(wall, 1), "first_loss": round(losses[0], 4),
           "final_loss": round(losses[-1], 4)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="../shared/anchors/smollm2-135m")
    ap.add_argument("--gsm8k", default=None, help="GSM8K JSONL for the SFT rows")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--methods", nargs="+", default=["sft", "dpo", "reward"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", nargs=3, metavar=("MODEL_DIR", "METHOD", "QUANT"),
                    help=argparse.SUPPRESS)  # one measurement, in a process of its own
    args = ap.parse_args()
    if args.one:
        print("ROW " + json.dumps(measure(*args.one, args.steps, args.gsm8k)), flush=True)
        return
    import subprocess
    import sys

    import torch
    print(f"device: {torch.cuda.get_device_name()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        model_dir = random_model(args.config, d)
        rows = []
        for method in args.methods:
            for quant in ("none", "4bit"):  # a fresh process each: no memory left from the last
                cmd = [sys.executable, __file__, "--one", model_dir, method, quant,
                       "--steps", str(args.steps)] + (["--gsm8k", args.gsm8k] if args.gsm8k
                                                       else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.split("ROW ", 1)[1].splitlines()[0]))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| method | quantization | weights GiB | peak GiB | s/step | loss first -> final |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['quantization']} | {r['weights_gib']} | {r['peak_gib']} | "
              f"{r['s_per_step']} | {r['first_loss']} -> {r['final_loss']} |")
    for m in args.methods:
        lo = next(r for r in rows if r["method"] == m and r["quantization"] == "none")
        q = next(r for r in rows if r["method"] == m and r["quantization"] == "4bit")
        print(f"{m}: 4bit peak / bf16 peak = {q['peak_gib'] / lo['peak_gib']:.2f}, "
              f"weights {q['weights_gib'] / lo['weights_gib']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
