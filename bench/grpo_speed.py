"""GRPO throughput on a GPU: the harness's defaults (recipes/grpo_math.yaml through
harness.train) against TRL's GRPO defaults (GRPOTrainer + GRPOConfig as TRL ships them, with
the same LoRA), side by side in one call, each in a fresh process.

Both arms: SmolLM2-135M's shape with random weights (built from a config folder), the
`builtin:math` prompts, the rewards math_answer + answer_format (the harness's reward functions,
so both score alike), LoRA r=16 on all linear layers, the same number of optimizer steps unless an arm asks for its own (--arms ARM:N).
The harness arms: its default (rollouts decoded with the adapter merged, harness.train.rollouts),
TRL's unmerged rollouts, merged and compiled rollouts, and TRL's continuous-batching engine
(--arms). Tokens/s is a rate, so the arms may run different numbers of steps.
Tokens are TRL's own `num_tokens` (prompt and completion tokens the trainer processed: the
generation and the training of each step), over the Trainer's train_runtime.

    python bench/grpo_speed.py --config ../shared/anchors/smollm2-135m [--steps 4]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time

from common import random_model

REWARDS = [{"name": "math_answer"}, {"name": "answer_format", "weight": 0.2}]


#: harness arms: name -> (rollouts merged, recipe values on top of recipes/grpo_math.yaml)
HARNESS_ARMS = {
    "harness": (True, {}),
    # TRL's own rollouts through the unmerged adapter (the harness before issue 31)
    "harness_unmerged": (False, {}),
    # rollouts merged and compiled (a static KV cache in CUDA graphs), as eval.decoding: auto
    # picks for a run of at least evaluation.COMPILE_BREAK_EVEN_STEPS decoding steps
    "harness_compiled": (True, {"eval.decoding": "compiled"}),
    # TRL's transformers continuous-batching engine (generate_batch) instead of generate
    "harness_cb": (False, {"trainer.use_transformers_continuous_batching": True}),
}


def harness_arm(model_dir: str, steps: int, out: str, arm: str = "harness") -> dict:
    from harness.data import trainset
    from harness import models
    from harness.config import recipe
    from harness.train import trainers
    merged, values = HARNESS_ARMS[arm]
    r = recipe.load("recipes/grpo_math.yaml")
    r = recipe.with_values(r, {"model.name": model_dir, "trainer.max_steps": steps,
                               "trainer.logging_steps": 1, **values})
    k = trainers.kind(r)
    plan = dataclasses.replace(models.device_plan(r.model), merged_rollouts=merged)
    tok = models.load_tokenizer(r.model)
    model = models.load_model(r.model, plan, task=k.task)
    ds, _, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    t = time.perf_counter()
    res = trainers.train(r, model, tok, ds, None, plan, out)
    return _row(arm, res.trainer, res.metrics, time.perf_counter() - t)


def trl_arm(model_dir: str, steps: int, out: str) -> dict:
    """TRL's GRPOConfig defaults; only what a run needs is set: steps, output, the same LoRA."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from harness.data import trainset
    from harness.config import recipe
    from harness.train import rewards
    r = recipe.load("recipes/grpo_math.yaml")
    ds, _, _ = trainset.load_train(r.data, r.seed, "prompt")
    funcs, _, weights = rewards.build([recipe.RewardSpec(**x) for x in REWARDS])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    config = GRPOConfig(output_dir=out, max_steps=steps, logging_steps=1, report_to="none",
                        reward_weights=weights, bf16=torch.cuda.is_available())
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=config, train_dataset=ds,
                          processing_class=AutoTokenizer.from_pretrained(model_dir),
                          peft_config=LoraConfig(r=16, lora_alpha=32,
                                                 target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    t = time.perf_counter()
    metrics = trainer.train().metrics
    return _row("trl_defaults", trainer, metrics, time.perf_counter() - t)


def _row(name: str, trainer, metrics: dict, wall: float) -> dict:
    import torch
    logged = [h for h in trainer.state.log_history if "num_tokens" in h]
    tokens = logged[-1]["num_tokens"] if logged else float("nan")
    runtime = metrics["train_runtime"]
    args = trainer.args
    return {"arm": name, "steps": trainer.state.global_step, "train_runtime_s": round(runtime, 2),
            "wall_s": round(wall, 1), "tokens": int(tokens), "tok_per_s": round(tokens / runtime),
            "num_generations": args.num_generations,
            "max_completion_length": args.max_completion_length,
            "batch": args.per_device_train_batch_size, "bf16": args.bf16,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if torch.cuda.is_available() else 0.0,
            "step_s": [round(h["step_time"], 2) for h in trainer.state.log_history
                       if "step_time" in h],
            "reward_mean": [round(h["reward"], 3) for h in trainer.state.log_history
                            if "reward" in h][-1:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="../shared/anchors/smollm2-135m")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--arms", nargs="+", default=["trl", "harness", "harness_unmerged"],
                    help=f"trl and any of {', '.join(HARNESS_ARMS)}; ARM:N runs N optimizer steps "
                    "(default --steps): a compiled arm pays its compile once, as a real run does, "
                    "so give it a run's length")
    ap.add_argument("--one", nargs=2, metavar=("ARM", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, model_dir = args.one
        with tempfile.TemporaryDirectory() as out:
            row = trl_arm(model_dir, args.steps, out) if name == "trl" else \
                harness_arm(model_dir, args.steps, out, name)
            print("ROW " + json.dumps(row), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as d:
        model_dir = random_model(args.config, d)
        for arm in args.arms:
            arm, _, steps = arm.partition(":")
            steps = int(steps or args.steps)
            proc = subprocess.run([sys.executable, __file__, "--one", arm, model_dir,
                                   "--steps", str(steps)], capture_output=True, text=True)
            if proc.returncode or "ROW " not in proc.stdout:
                print(f"{arm} failed:\n{proc.stderr[-3000:]}", flush=True)
                continue
            rows.append(json.loads(proc.stdout.split("ROW ", 1)[1].splitlines()[0]))
            print(json.dumps(rows[-1]), flush=True)
    trl = next((r for r in rows if r["arm"] == "trl_defaults"), None)
    print("\n| arm | steps | completions a prompt | max completion | tokens | train s | tokens/s "
          "| x TRL defaults | peak GiB |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['tok_per_s'] / trl['tok_per_s']:.2f}" if trl else ""
        print(f"| {r['arm']} | {r['steps']} | {r['num_generations']} | "
              f"{r['max_completion_length']} | {r['tokens']:,} | {r['train_runtime_s']} | "
              f"{r['tok_per_s']:,} | {ratio} | {r['peak_gib']} |")


if __name__ == "__main__":
    main()
