"""Golden-set decoding throughput on a GPU: the harness's generate (static KV cache compiled
into CUDA graphs, length-sorted fixed-size batches) against plain `model.generate` batches
(dynamic cache), the peer the anchor measured (HF generate, batches of 128: 1.24k new tok/s).

SmolLM2-135M's shape with random weights; every prompt is forced to NEW new tokens
(min_new_tokens), so both sides produce exactly the same number of tokens.

    python bench/decode.py --config ../shared/anchors/smollm2-135m \\
        --goldenset goldensets/math.yaml --repeat 13 --new 128 --batch 256
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="../shared/anchors/smollm2-135m")
    ap.add_argument("--goldenset", default="goldensets/math.yaml")
    ap.add_argument("--repeat", type=int, default=13, help="copies of the set's prompts")
    ap.add_argument("--new", type=int, default=128, help="new tokens per prompt (forced)")
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--peer-batch", type=int, default=128)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from harness.eval import scoring, goldensets
    tok = AutoTokenizer.from_pretrained(args.config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config),
                                             dtype=torch.bfloat16).cuda().eval()
    gs = goldensets.load(args.goldenset)
    msgs = [scoring.chat_prompt(tok, p) for p in gs.prompts] * args.repeat
    texts = [scoring.render(tok, m) for m in msgs]
    tokens = len(texts) * args.new
    force = {"min_new_tokens": args.new}
    print(f"device {torch.cuda.get_device_name()}; {len(texts)} prompts from {gs.name}, "
          f"{args.new} new tokens each ({tokens} in all)", flush=True)

    def timed(label, **kw):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = scoring.generate(model, tok, texts, args.new, **kw, **force)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"{label}: {dt:.2f} s, {tokens / dt:,.0f} new tok/s", flush=True)
        return dt, out

    rows = {}
    dt, peer = timed(f"peer: model.generate, dynamic cache, batch {args.peer_batch}",
                     batch_size=args.peer_batch, static_cache=False)
    rows["peer"] = tokens / dt
    for b in args.batch:
        first, _ = timed(f"harness batch {b}, first pass (compiles)", batch_size=b,
                         static_cache=True)
        dt, ours = timed(f"harness batch {b}, compiled", batch_size=b, static_cache=True)
        rows[f"harness_b{b}"] = tokens / dt
        rows[f"harness_b{b}_with_compile"] = tokens / first
        same = sum(a == p for a, p in zip(ours, peer)) / len(ours)
        print(f"  ratio to peer: {rows[f'harness_b{b}'] / rows['peer']:.1f}x; "
              f"outputs equal to the peer's on {same:.0%} of prompts", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
