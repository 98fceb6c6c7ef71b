"""Training speed on a GPU: the harness's recipe path against the best-tuned TRL configuration,
side by side in one call.

Workload (issue 6, ../shared/README.md): the first 4,000 GSM8K train rows as chat, SmolLM2-135M's
shape with random weights, bf16, LoRA r=16 on all linear layers, 1 epoch, 16 rows (or packed
bins of max_length 1024) a step, lr 2e-4 linear. The harness runs recipes/sft_gsm8k.yaml with
the data and model pointed here and the loss on every token (as the peer's `messages` rows);
everything else is the harness's GPU defaults. Each configuration runs in a fresh process. The
peers are ../shared/anchors/bench_sft.py's own variants, run in the same call.

    python bench/train_speed.py --shared ../shared [--configs harness harness_sdpa] \
        [--peers liger liger] [--dpo] [--processes 1 2] [--warm] [--runs 3] [--json out.json]
    (PROFILE=harness: profile it, PROFILE_STEPS=first:count and PROFILE_TRACE=folder for
    which steps and a Chrome trace a rank; --processes: each configuration on 1 and on 2 GPUs,
    under torchrun as `harness train --processes N` runs it; a configuration named `name@2`
    runs on 2 GPUs only, e.g. harness_b8@2 for one GPU's global batch on two; --warm: each
    measured on its second run in its process, as the peer and a sweep's later trials are)

On the GPU machine ../shared does not travel: copy what this reads into the carried, ignored
.whl/ and pass --shared .whl/shared (anchors/bench_sft.py and anchors/smollm2-135m, and
data/gsm8k/train.jsonl).

Tokens are non-padding tokens; MFU uses 4N FLOPs a token for LoRA (N: the model's parameters)
against the H100's 989 TFLOP/s bf16 peak, as the peer does.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import random_model

PEAK_FLOPS = 989e12
# named configurations: recipe overrides on top of the workload
CONFIGS = {
    # the GPU defaults: padding-free packing + varlen attention, bf16 LoRA weights, fused AdamW
    "harness": {},
    # the same, 3 epochs: the first steps' fixed cost (eager steps, capture, NCCL's start)
    # spread over 3x the steps, as in a trial of minutes (its tokens column counts one epoch's
    # tokens, so read its ratios, not its tokens/s)
    "harness_3ep": {"trainer.num_train_epochs": 3},
    # the same, its loader workers started again every epoch (Trainer's default)
    "harness_3ep_refork": {"trainer.num_train_epochs": 3,
                           "trainer.dataloader_persistent_workers": False},
    # TRL's own choices for each lever, one at a time
    "harness_sdpa": {"model.attn_implementation": "sdpa"},
    "harness_fp32_adapter": {"adapter.dtype": "float32"},
    "harness_adamw": {"trainer.optim": "adamw_torch"},
    "harness_liger": {"trainer.use_liger_kernel": True},
    "harness_compile": {"trainer.torch_compile": True},
    "harness_no_autocast": {"trainer.bf16": False},  # a bf16 model and bf16 adapters, no autocast
    "harness_unfused_norm": {"model.fused_norm": False},  # transformers' own RMSNorm
    "harness_loader_workers": {"trainer.dataloader_num_workers": 2},  # collation off the loop
    # twice the tokens a step (32 bins of 1024), at the same lr and at lr x sqrt(2)
    "harness_32k": {"trainer.per_device_train_batch_size": 32},
    "harness_32k_lr": {"trainer.per_device_train_batch_size": 32, "trainer.learning_rate": 2.83e-4},
    # data parallel (--processes 2): the same global batch as one GPU (8 bins a GPU), and DDP's
    # unused-parameter search back on (transformers turns it on for a PeftModel)
    "harness_b8": {"trainer.per_device_train_batch_size": 8},
    "harness_find_unused": {"trainer.ddp_find_unused_parameters": True},
    # DDP's own defaults: buffers broadcast every forward, gradients copied in and out of the
    # all-reduce buckets
    "harness_ddp_defaults": {"trainer.ddp_broadcast_buffers": True},
    # K and V copied to the query's 9 heads before the varlen kernel (DevicePlan.grouped_kv)
    "harness_repeat_kv": {},
    # batch padding and allocator segments, each back to TRL's or PyTorch's choice, then both
    "harness_unpadded": {"trainer.pad_to_multiple_of": None},  # a new batch length every step
    "harness_fixed_segments": {},  # the CUDA allocator's fixed-size segments
    "harness_before": {"trainer.pad_to_multiple_of": None},
    "harness_cublaslt": {},  # GEMMs through cuBLASLt instead of cuBLAS
    "harness_eager": {"model.cuda_graphs": False},  # the decoder stack run op by op from Python
    "harness_trainer_own": {},  # Trainer's own per-step host work (DevicePlan.lean_steps off)
    # one loader worker, and none (batches collated in the loop): a worker's start (a fork of
    # this process, then its first batch) is paid in the first step of every run
    "harness_loader_1": {"trainer.dataloader_num_workers": 1},
    "harness_loader_main": {"trainer.dataloader_num_workers": 0},
    "dpo": {},
    "dpo_precompute": {"trainer.precompute_ref_log_probs": True},
}
# what a configuration sets outside the recipe: environment variables, device plan switches
FIXED_SEGMENTS = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}
ENV = {"harness_fixed_segments": FIXED_SEGMENTS, "harness_before": FIXED_SEGMENTS,
       "harness_cublaslt": {"TORCH_BLAS_PREFER_CUBLASLT": "1"}}
SWITCHES = {"harness_repeat_kv": {"grouped_kv": False},
            "harness_ddp_defaults": {"bucket_views": False},
            "harness_trainer_own": {"lean_steps": False}}


def workload(name: str, model_dir: str, shared: str, rows: int) -> dict:
    from harness.config import recipe
    if name.startswith("dpo"):
        r = recipe.load("recipes/dpo_math.yaml")
        over = {"data.builtin_rows": rows // 2, "data.eval_rows": 0,
                "trainer.per_device_train_batch_size": 16, "trainer.max_length": 512,
                "trainer.learning_rate": 5e-5}
    else:
        r = recipe.load("recipes/sft_gsm8k.yaml")
        over = {"data.train": f"{shared}/data/gsm8k/train.jsonl", "data.max_rows": rows,
                "data.eval_rows": 0, "data.shuffle": False, "trainer.max_length": 1024,
                "trainer.per_device_train_batch_size": 16, "trainer.learning_rate": 2e-4,
                "trainer.lr_scheduler_type": "linear", "trainer.completion_only_loss": False}
    over.update({"model.name": model_dir, "adapter.dropout": 0.0, "adapter.r": 16,
                 "adapter.alpha": 32, "trainer.logging_steps": 10, "trainer.num_train_epochs": 1,
                 **CONFIGS[name]})
    return recipe.with_values(r, over)


def tokens_in(ds) -> int:
    if "chosen_ids" in ds.column_names:  # DPO runs prompt+chosen and prompt+rejected
        return sum(2 * len(p) + len(c) + len(j) for p, c, j in zip(
            ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    return sum(len(x) for x in ds["input_ids"])


def profiler(first: int, steps: int, trace: str | None):
    """A callback that profiles training steps first..first+steps and prints the top ops; with
    `trace` (a folder) each rank also writes a Chrome trace there. `first` 0: the profile starts
    before the Trainer is built (start() is called then), so it also holds the DDP wrap, NCCL's
    first collectives and the first steps."""
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        prof = None

        def start(self):
            self.prof = torch.profiler.profile(activities=[
                torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            self.prof.__enter__()

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == first and self.prof is None and first:
                self.start()

        def on_step_end(self, args, state, control, **kw):
            if self.prof and state.global_step == first + steps:
                torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                table = self.prof.key_averages()
                for key in ("cuda_time_total", "cpu_time_total"):
                    print(table.table(sort_by=key, row_limit=22, max_name_column_width=60),
                          file=sys.stderr, flush=True)
                if trace:
                    from harness.train import distributed
                    self.prof.export_chrome_trace(
                        f"{trace}/s{first}_{distributed.world_size()}gpu_r{distributed.rank()}"
                        ".json.gz")
                self.prof = None
    return Profile()


def steady_clock(first: int):
    """A callback timing the steps after `first` (CUDA synchronized): throughput without the
    start-up every run pays once (kernel and NCCL set-up, the first allocations). It also times
    each of the first steps, from the start of training."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        start = end = None
        steps = 0
        marks: list[float]  # set when training begins

        def on_train_begin(self, args, state, control, **kw):
            self.marks = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kw):
            if state.global_step <= first:
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())  # later steps: the host's, unsynchronized
            if state.global_step == first:
                self.start = self.marks[-1]

        def on_train_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.end, self.steps = time.perf_counter(), state.global_step

        def first_steps_ms(self) -> list[int]:
            return [round(1000 * (b - a)) for a, b in zip(self.marks, self.marks[1:first + 1])]

        def later_steps_ms(self) -> list[int]:
            later = self.marks[first:]
            return [round(1000 * (b - a)) for a, b in zip(later, later[1:])]
    return Clock()


class Pauses:
    """A gc.callbacks entry timing Python's collector passes: generation -> count, ms."""

    def __init__(self):
        self.started, self.seen = 0.0, {}

    def __call__(self, phase: str, info: dict):
        if phase == "start":
            self.started = time.perf_counter()
            return
        n, ms, longest = self.seen.get(info["generation"], (0, 0.0, 0.0))
        took = 1000 * (time.perf_counter() - self.started)
        self.seen[info["generation"]] = (n + 1, ms + took, max(longest, took))

    def summary(self) -> dict:
        return {f"gen{g}": {"passes": n, "ms": round(ms, 1), "longest_ms": round(top, 1)}
                for g, (n, ms, top) in sorted(self.seen.items())}


def measure(name: str, model_dir: str, shared: str, rows: int, warm: bool = False,
            runs: int = 1) -> list[dict]:
    """`runs` training runs of `name`, one after another in this process (or torchrun group);
    `warm`: the same run once before them, unmeasured, as a sweep's first trial is before its
    later ones and the peer's first run before its second: kernels loaded and compiled, NCCL's
    communicators up."""
    from harness.data import trainset
    from harness import models
    from harness.train import trainers
    r = workload(name, model_dir, shared, rows)
    k = trainers.kind(r)
    plan = dataclasses.replace(models.device_plan(r.model), **SWITCHES.get(name, {}))
    tok = models.load_tokenizer(r.model)
    tr, _, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    handover = trainers.Handover()  # runs after the first take its rows, as a sweep's trials
    if warm:
        with tempfile.TemporaryDirectory() as out:
            trainers.train(r, models.load_model(r.model, plan, task=k.task), tok, tr, None, plan,
                           out, handover=handover)
    return [{**one_run(name, r, k, plan, tok, tr, handover), "warm": warm, "run": i}
            for i in range(runs)]


def one_run(name: str, r, k, plan, tok, tr, handover) -> dict:
    import torch

    from harness import models
    from harness.train import trainers
    model = models.load_model(r.model, plan, task=k.task)
    n_params = sum(p.numel() for p in model.parameters())
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        prof = []
        if os.environ.get("PROFILE") == name:  # PROFILE_STEPS=first:count, PROFILE_TRACE=folder
            first, count = map(int, os.environ.get("PROFILE_STEPS", "10:3").split(":"))
            prof = [profiler(first, count, os.environ.get("PROFILE_TRACE"))]
            if first == 0:
                prof[0].start()
        clock = steady_clock(5)
        pauses = Pauses()
        gc.callbacks.append(pauses)
        try:
            res = trainers.train(r, model, tok, tr, None, plan, out, callbacks=prof + [clock],
                                 handover=handover)
        finally:
            gc.callbacks.remove(pauses)
        wall = time.perf_counter() - t
    tokens = tokens_in(res.trainer.train_dataset)  # every rank's: the dataset is not sharded
    runtime = res.metrics["train_runtime"]
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    args = res.trainer.args
    from harness.train import distributed
    n = distributed.world_size()
    ddp = distributed.params(args, res.trainer)
    return {"config": name if n == 1 else f"{name}@{n}gpu", "gpus": n,
            "runtime_s": round(runtime, 2), "wall_s": round(wall, 1),
            "tokens": tokens, "tok_per_s": round(tokens / runtime),
            # bins are nearly full, so tokens spread evenly over the steps
            "steady_tok_per_s": round(tokens * (clock.steps - 5) / clock.steps
                                      / (clock.end - clock.start)),
            "mfu_pct": round(100 * tokens / runtime * 4 * n_params / PEAK_FLOPS, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "steps": res.trainer.state.global_step, "first_steps_ms": clock.first_steps_ms(),
            "gc_ms": pauses.summary(),  # this rank's collector passes while training
            "later_steps_ms": clock.later_steps_ms(),
            "train_loss": round(res.metrics["train_loss"], 4),
            "final_loss": round(losses[-1], 4), "curve": [round(x, 3) for x in losses],
            "in_sync": res.metrics.get("distributed/in_sync"),
            "settings": {"attention": plan.attention if trainers.padding_free(args) else
                         model.config._attn_implementation,
                         "packing": getattr(args, "packing", None),
                         "liger": args.use_liger_kernel, "optim": args.optim,
                         "adapter_dtype": str(next(p.dtype for n, p in res.model.named_parameters()
                                                   if "lora_" in n)),
                         "compile": args.torch_compile, "bf16": args.bf16,
                         "fused_norm": plan.fused_norm,
                         "expandable_segments": plan.expandable_segments,
                         "cuda_graph_steps": res.metrics.get("cuda_graphs/steps"),
                         "cuda_graph_shapes": res.metrics.get("cuda_graphs/shapes"),
                         "pad_to_multiple_of": getattr(args, "pad_to_multiple_of", None),
                         "effective_batch": ddp.pop("distributed/effective_batch_size"),
                         "find_unused": args.ddp_find_unused_parameters,
                         "ddp": ddp,  # world size, and what DDP was built with
                         "gradient_checkpointing": args.gradient_checkpointing}}


def peers(shared: str, which: list[str], rows: int) -> list[dict]:
    """../shared/anchors/bench_sft.py, unchanged, in a process of its own."""
    with tempfile.TemporaryDirectory() as out:
        # one GPU, as the peer is meant to run (several visible: Trainer's DataParallel, refused)
        env = {"CUDA_VISIBLE_DEVICES": "0", **os.environ, "N_TRAIN": str(rows), "OUT": out}
        proc = subprocess.run([sys.executable, f"{shared}/anchors/bench_sft.py", *which],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(proc.stdout[-2000:] + proc.stderr[-3000:])
    # each variant prints the Trainer's metrics, then `name {figures}`; a variant named twice
    # runs twice and the second (warm: Triton kernels compiled) run is kept
    found, loss = {}, None
    for line in proc.stdout.splitlines():
        if m := re.search(r"'train_loss': '([0-9.e+-]+)'", line):
            loss = float(m.group(1))
        elif m := re.match(r"^(\w+) (\{.*\})$", line):
            found[m.group(1)] = {"config": f"peer:{m.group(1)}", **ast.literal_eval(m.group(2)),
                                 "train_loss": loss}
    return list(found.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--configs", nargs="+", default=["harness", "harness_sdpa"])
    ap.add_argument("--peers", nargs="*", default=["liger", "liger"],
                    help="bench_sft.py variants; one named twice is measured warm")
    ap.add_argument("--dpo", action="store_true", help="also DPO, with and without precompute")
    ap.add_argument("--processes", nargs="+", type=int, default=[1],
                    help="run each configuration data-parallel on this many GPUs (several: each)")
    ap.add_argument("--share-gpu", action="store_true",
                    help="several processes on GPU 0, DDP over gloo: checks data parallel "
                         "(graphs, ranks in sync, loss) on a one-GPU machine; not its speed")
    ap.add_argument("--warm", action="store_true",
                    help="measure each configuration's second run in its process (see measure)")
    ap.add_argument("--runs", type=int, default=1,
                    help="measured runs of each configuration, one after another in its process "
                         "(or torchrun group); with --processes, run i on 1 GPU pairs with run i "
                         "on 2")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", nargs=2, metavar=("CONFIG", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        from harness.train import distributed
        if args.share_gpu and distributed.world_size() > 1:  # every rank on GPU 0 (accelerate
            os.environ["LOCAL_RANK"] = "0"  # reads LOCAL_RANK); NCCL refuses two ranks a GPU
            CONFIGS[args.one[0]] = {**CONFIGS[args.one[0]], "trainer.ddp_backend": "gloo"}
        distributed.setup()
        found = measure(args.one[0], args.one[1], args.shared, args.rows, args.warm, args.runs)
        if distributed.is_main():
            print("ROWS " + json.dumps(found), flush=True)
        return
    import torch
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows = peers(args.shared, args.peers, args.rows) if args.peers else []
    for r in rows:
        print(json.dumps(r), flush=True)
    configs = args.configs + (["dpo", "dpo_precompute"] if args.dpo else [])
    with tempfile.TemporaryDirectory() as d:
        model_dir = random_model(f"{args.shared}/anchors/smollm2-135m", d)
        # "name@N": that configuration on N GPUs only (harness_b8@2: one GPU's global batch)
        runs = [(c.split("@")[0], [int(c.split("@")[1])] if "@" in c else args.processes)
                for c in configs]
        for name, n in [(c, n) for c, ns in runs for n in ns]:
            launcher = [sys.executable] if n == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={n}"]
            cmd = [*launcher, __file__, "--one", name, model_dir, "--shared", args.shared,
                   "--rows", str(args.rows)] + (["--share-gpu"] if args.share_gpu else []) \
                + (["--warm"] if args.warm else []) + ["--runs", str(args.runs)]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, **ENV.get(name, {})})
            if proc.returncode or "ROWS " not in proc.stdout:
                print(f"{name} failed:\n{proc.stderr[-3000:]}", flush=True)
                continue
            for line in dict.fromkeys(x for x in proc.stderr.splitlines()
                                      if x.startswith("harness: ")):  # what the harness said
                print(f"{name}@{n}: {line}", flush=True)
            if os.environ.get("PROFILE") == name:
                print(proc.stderr[proc.stderr.find("-----"):][-9000:], flush=True)
            for row in json.loads(proc.stdout.split("ROWS ", 1)[1].splitlines()[0]):
                rows.append(row)
                print(json.dumps(row), flush=True)
    ref = next((r for r in rows if r["config"] == "peer:trl_tuned_liger_lora"), None)
    # each several-GPU run against the 1-GPU run of its configuration just before it, run i
    # against run i
    one = {}
    for r in rows:
        if r.get("gpus") == 1:
            one[r["config"]] = r
            one[(r["config"], r.get("run", 0))] = r
        elif r["config"].startswith("harness_b8@") and "harness" in one:
            base = one["harness"]  # the same global batch (16 bins) on one GPU
            print(f"{r['config']}: mean / final loss {r['train_loss']} / {r['final_loss']} "
                  f"against 1 GPU's {base['train_loss']} / {base['final_loss']} at the same "
                  f"global batch; ranks in sync {r['in_sync']}, graphed steps "
                  f"{r['settings']['cuda_graph_steps']}", flush=True)
        elif r.get("gpus", 1) > 1 and r["config"].split("@")[0] in one:
            base = one.get((r["config"].split("@")[0], r.get("run", 0)),
                           one[r["config"].split("@")[0]])
            steady = r["steady_tok_per_s"] / base["steady_tok_per_s"]
            print(f"{r['config']}{' (warm)' if r.get('warm') else ''} run {r.get('run', 0)}: "
                  f"{r['tok_per_s'] / base['tok_per_s']:.2f}x the same configuration on 1 GPU "
                  f"({steady:.2f}x after the first 5 steps); graphed "
                  f"steps {base['settings']['cuda_graph_steps']} / "
                  f"{r['settings']['cuda_graph_steps']}, ranks in sync {r['in_sync']}",
                  flush=True)
    print("\n| configuration | tokens/s | x TRL tuned+Liger | after step 5 | MFU % | peak GiB | "
          "train s | wall s | mean train loss | final loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['tok_per_s'] / ref['tok_per_s']:.2f}" if ref and not \
            r["config"].startswith("dpo") else ""
        print(f"| {r['config']} | {r['tok_per_s']:,} | {ratio} | "
              f"{r.get('steady_tok_per_s', 0):,} | {r['mfu_pct']} | "
              f"{r['peak_gib']} | {r['runtime_s']} | {r.get('wall_s', '')} | "
              f"{r.get('train_loss', '')} | {r.get('final_loss', '')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
