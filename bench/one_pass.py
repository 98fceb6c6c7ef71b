"""One decoding pass over every golden set (issue 31) against one pass a set, in one process:
greedy agreement of the outputs, each metric both ways, decoding steps and seconds.

The model as the harness scores it on this machine (fp32 on a CPU, bf16 on a GPU), eager
decoding, the golden sets a sweep scores (math, general_knowledge), each with its own
max_new_tokens. Each way runs twice; the second run's seconds are reported.

    python bench/one_pass.py [--model embedded:smollm2-135m-instruct | --config DIR]
        [--goldensets builtin:math builtin:general_knowledge] [--batch N]
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--config", help="a config folder: random weights of that shape instead")
    ap.add_argument("--goldensets", nargs="+", default=["builtin:math",
                                                        "builtin:general_knowledge"])
    ap.add_argument("--batch", type=int, default=None, help="default: the harness's")
    args = ap.parse_args()
    import torch

    from common import scoring_model

    from harness.eval import scoring, goldensets
    from harness.core import context
    model, tok, plan = scoring_model(args.model, args.config)
    sets = [goldensets.load(p) for p in args.goldensets]
    batch = args.batch or (256 if plan.device == "cuda" else 32)

    def per_set():
        return {gs.name: scoring.evaluate_set(model, tok, gs, batch) for gs in sets}

    def one_pass():
        return scoring.evaluate_model(model, tok, sets, batch)

    out = {}
    for label, how in (("one pass a set", per_set), ("one pass", one_pass)):
        for _ in range(2):
            before = context.current().ledger.totals()
            if plan.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            res = how()
            if plan.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            after = context.current().ledger.totals()
        out[label] = (res, seconds, after.get("decode_steps", 0) - before.get("decode_steps", 0))
    (a, ta, sa), (b, tb, sb) = out["one pass a set"], out["one pass"]
    print(json.dumps({"device": plan.device, "dtype": plan.dtype, "batch": batch,
                      "per_set_s": round(ta, 2), "one_pass_s": round(tb, 2),
                      "per_set_steps": sa, "one_pass_steps": sb}))
    print("\n| golden set | examples | same greedy output | metric | one pass a set | one pass |\n"
          "|---|---|---|---|---|---|")
    for gs in sets:
        x, y = a[gs.name], b[gs.name]
        same = sum(p.get("prediction") == q.get("prediction")
                   for p, q in zip(x.examples, y.examples))
        for metric in x.metrics:
            print(f"| {gs.name} | {len(x.examples)} | {same}/{len(x.examples)} | {metric} | "
                  f"{x.metrics[metric]:.4f} | {y.metrics[metric]:.4f} |")


if __name__ == "__main__":
    main()
