"""The memory plan against the GPU (harness.accel.memory): for each model shape, the plan's line,
its estimate against the measured peak, tokens/s, MFU, and whether training ran out of memory.

Workload: a shape from ../shared/anchors/shapes (0.5b, 1.7b, 3b, 7b, 8b: real models'
dimensions, SmolLM2's 49,152-token vocabulary) with random bf16 weights built on the GPU, the
first --rows GSM8K train rows, the recipe's DEFAULTS (no `trainer:` keys: 8 packed bins of
TRL's max_length 1,024 a step, LoRA r=16 with dropout 0.05 on every linear layer, 1 epoch) and
the train path `harness train` and every sweep trial take (harness.pipeline.prepared.prepare,
then harness.train.trainers.train); golden sets are loaded, not scored. `8b:4bit` adds
`model.quantization: 4bit` (QLoRA; skipped with a line where bitsandbytes is not installed).
Each shape is built in one process and trained in another (the plan measures the free memory
of a process that has not touched the GPU yet), so an out-of-memory one leaves the next a clean
GPU.

Prints, per shape: the plan's line, estimated GiB (it counts CUDA graphs' pool and 1 GiB of
workspaces, so read it against the reserved peak) against peak allocated and reserved GiB while
training (torch.cuda.max_memory_allocated/reserved, reset after the model is loaded), tokens/s
(non-padding tokens over TRL's train_runtime, the first steps and any graph capture included:
a short run), MFU (4N FLOPs a token for LoRA, 6N for full fine-tuning, against --peak-tflops,
989 for an H100's bf16 dense peak; recomputation under gradient checkpointing is not counted)
and the outcome: trained, OOM, or refused (the plan's one line before loading).

    python bench/memory_plan.py --shared ../shared --sizes 0.5b 1.7b 3b 7b [--rows 600]
    python bench/memory_plan.py --shared ../shared --sizes 8b 8b:4bit
    python bench/memory_plan.py --shared ../shared --sizes tiny      # CPU: the flow only
    (--set KEY=VALUE: a recipe override for every shape; bench/sweep_e2e.py's step is
    --set trainer.per_device_train_batch_size=16 --set adapter.dropout=0, and
    --set model.cuda_graphs=true keeps the graphs whatever the plan's estimate says)

On the GPU machine one call may run 600 s and carry 64 MiB: weights are built there, not
carried; ../shared travels as a copy under the carried, ignored .whl/ (anchors/shapes,
anchors/smollm2-135m, data/gsm8k/train.jsonl), and an 8B shape takes ~2-3 minutes (building
16 GB of weights, saving and loading them), so split the sizes over calls as above.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 2 ** 30
# a 2-layer shape for a CPU run of the flow (not a real model's)
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "tie_word_embeddings": True}


def shape_folder(shared: str, size: str, out: str) -> str:
    """`size`'s config folder (SmolLM2's tokenizer beside it), written by shapes/make.py."""
    if size == "tiny":
        import shutil
        shutil.copytree(f"{shared}/anchors/smollm2-135m", out, dirs_exist_ok=True)
        config = json.loads((Path(out) / "config.json").read_text())
        (Path(out) / "config.json").write_text(json.dumps({**config, **TINY}))
    else:
        subprocess.run([sys.executable, f"{shared}/anchors/shapes/make.py", size, out],
                       check=True, capture_output=True)
    return out


def random_weights(folder: str) -> int:
    """Random bf16 weights of the folder's config, built on the GPU when there is one (an 8B
    model initialises in seconds there, minutes on the CPU), saved beside it. Returns the
    parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder),
                                                 dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def recipe_for(folder: str, shared: str, rows: int, quantized: bool, root: Path,
               sets: list[str] = ()):
    """The recipe's defaults but for the model, the data and a short evaluation; `sets`:
    KEY=VALUE overrides (YAML values), as `harness train --set` takes them."""
    import yaml

    from harness.config import recipe
    over = {k: yaml.safe_load(v) for k, _, v in (x.partition("=") for x in sets)}
    return recipe.build({
        "name": "memory_plan", "method": "sft",
        "model": {"name": folder, "quantization": "4bit" if quantized else "none"},
        "data": {"train": f"{shared}/data/gsm8k/train.jsonl", "max_rows": rows},
        "eval": {"goldensets": ["builtin:math"], "max_examples": 16, "max_new_tokens": 32,
                 "forgetting_guard": None},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db"},
        "output_dir": str(root / "out"), "reports_dir": str(root / "reports"),
    }, str(root / "memory_plan.yaml"), over)


def build(size: str, shared: str, folder: str) -> dict:
    """The shape's folder with random weights, in a process of its own: the training process
    then starts CUDA, its allocator settings and its free memory as a user's does."""
    import time as clock
    t = clock.perf_counter()
    shape_folder(shared, size.partition(":")[0], folder)
    n = random_weights(folder)
    return {"params": n, "build_s": round(clock.perf_counter() - t, 1)}


def one(size: str, folder: str, shared: str, rows: int, sets: list[str]) -> dict:
    """One shape whose weights `build` wrote, in this process: plan, load, train, measure."""
    import torch

    from harness.core.errors import HarnessError
    from harness.pipeline import prepared
    from harness.train import trainers
    from train_speed import tokens_in
    quant = size.partition(":")[2]
    out = {"size": size, "outcome": "trained"}
    gpu = torch.cuda.is_available()
    root = Path(folder).parent
    r = recipe_for(folder, shared, rows, bool(quant), root, sets)
    try:
        prep = prepared.prepare(r)
    except HarnessError as e:  # the plan's refusal, before loading
        return {**out, "outcome": f"refused: {e}"}
    plan = prep.plan
    out.update(est_gib=plan.memory_est_gib, free_gib=plan.memory_free_gib,
               checkpointing=plan.gradient_checkpointing, graphs=plan.cuda_graphs,
               micro_batch=plan.micro_batch, accumulation=plan.accumulation)
    model = prep.load_model()
    if gpu:
        out["weights_gib"] = round(torch.cuda.memory_allocated() / GIB, 2)
        torch.cuda.reset_peak_memory_stats()
    try:
        res = trainers.train(r, model, prep.tok, prep.train_ds, prep.eval_ds, plan,
                             str(root / "out"), handover=prep.handover)
    except torch.OutOfMemoryError as e:
        out["outcome"] = f"OOM: {str(e).splitlines()[0][:160]}"
        res = None
    if gpu:
        out.update(peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                   reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2))
    if res is not None:
        tokens = tokens_in(res.trainer.train_dataset)
        runtime = res.metrics["train_runtime"]
        # FLOPs a token per parameter: the parent takes MFU from the count `build` made (a
        # loaded 4-bit model's parameters count its packed bytes)
        out["flops_per_param"] = 4 if r.adapter.type == "lora" else 6
        out.update(steps=res.trainer.state.global_step, tokens=tokens,
                   tok_per_s=round(tokens / runtime), runtime_s=round(runtime, 1),
                   graph_steps=res.metrics.get("cuda_graphs/steps"),
                   train_loss=round(res.metrics["train_loss"], 4))
    return out


def child(argv: list[str]) -> tuple[dict | None, list[str], subprocess.CompletedProcess]:
    """This script on `argv` in a fresh process: its JSON line, the harness's lines it said."""
    p = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    said = [x for x in p.stderr.splitlines() if "memory plan" in x or x.startswith("error")
            or "CUDA graphs off" in x]
    res = next((json.loads(x) for x in reversed(p.stdout.splitlines()) if x.startswith("{")),
               None)
    return res, said, p


def run_shape(size: str, args) -> dict:
    """`size` built in one fresh process and trained in another."""
    t = time.perf_counter()
    if size.partition(":")[2] and importlib.util.find_spec("bitsandbytes") is None:
        return {"size": size, "said": [], "wall_s": 0.0, "outcome": "skipped: bitsandbytes is "
                "not installed (4-bit needs it: ../shared/device/wheels.sh qlora)"}
    with tempfile.TemporaryDirectory() as d:
        folder = f"{d}/model"
        built, _, p = child(["--build", size, "--folder", folder, "--shared", args.shared])
        res, said = None, []
        if built is not None:
            res, said, p = child(["--one", size, "--folder", folder, "--shared", args.shared,
                                  "--rows", str(args.rows), *(f"--set={x}" for x in args.set)])
    if res is None:  # died outright (a CUDA error, the OOM killer): its last words
        res = {"size": size, "outcome": f"crashed (exit {p.returncode}): "
               f"{(p.stderr.strip().splitlines() or [''])[-1][:200]}"}
    return {**(built or {}), **res, "said": said, "wall_s": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--sizes", nargs="+", default=["0.5b", "1.7b", "3b", "7b", "8b", "8b:4bit"])
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for every shape, e.g. "
                    "trainer.per_device_train_batch_size=16 (bench/sweep_e2e.py's batch)")
    # the children: one shape's weights, or its training; a JSON line each
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.shared = str(Path(args.shared).resolve())
    if args.build:
        print(json.dumps(build(args.build, args.shared, args.folder)))
        return
    if args.one:
        print(json.dumps(one(args.one, args.folder, args.shared, args.rows, args.set)))
        return
    from harness.accel.memory import size as in_words
    results = []
    for size in args.sizes:
        res = run_shape(size, args)
        if "tok_per_s" in res and "params" in res:
            res["mfu_pct"] = round(100 * res["tok_per_s"] * res["flops_per_param"]
                                   * res["params"] / (args.peak_tflops * 1e12), 2)
        results.append(res)
        print(f"\n{size} ({res['wall_s']} s): {res['outcome']}", flush=True)
        print(*res["said"], sep="\n", flush=True)
        # each shape's figures as soon as it ends: a call cut at its time limit keeps them
        print(json.dumps({k: v for k, v in res.items() if k != "said"}), flush=True)
    print("\n| shape | params | plan | est. GiB (free) | peak allocated GiB | peak reserved GiB "
          "| tokens/s | MFU % | outcome |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        plan = "-" if "checkpointing" not in r else (
            f"{'ckpt' if r['checkpointing'] else 'no ckpt'}, "
            + (f"{r['micro_batch']} x {r['accumulation']}" if r["accumulation"] > 1
               else "full batch") + f", graphs {'on' if r['graphs'] else 'off'}")
        params = in_words(r["params"]) if "params" in r else "-"
        print(f"| {r['size']} | {params} | {plan} | {r.get('est_gib', '-')} "
              f"({r.get('free_gib', '-')}) | {r.get('peak_gib', '-')} | "
              f"{r.get('reserved_gib', '-')} | {r.get('tok_per_s', '-')} | "
              f"{r.get('mfu_pct', '-')} | {r['outcome'].split(':')[0]} |")
    print(json.dumps([{k: v for k, v in r.items() if k != "said"} for r in results]))


if __name__ == "__main__":
    main()
