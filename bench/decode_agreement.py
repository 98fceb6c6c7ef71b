"""Eager scoring on a GPU, before and after issue 17's two changes, in one process: greedy
outputs and first/second pass times on the math and general_knowledge golden sets.

- base model: SDPA as torch picks it (cuDNN on Hopper) vs without cuDNN
  (harness.attention.scoring_kernels);
- a LoRA model (r=16 on every linear layer, bf16 as the harness trains it on a GPU, B drawn
  N(0, 0.02) so the adapter changes the outputs): peft's unmerged adapter vs merged
  (harness.models.merged_for_scoring).

SmolLM2-135M's shape with random weights, each golden set decoded whole with its own
max_new_tokens, as `harness sweep` scores it.

    python bench/decode_agreement.py --config ../shared/anchors/smollm2-135m
"""
from __future__ import annotations

import argparse
import contextlib
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="../shared/anchors/smollm2-135m")
    ap.add_argument("--goldensets", nargs="+", default=["builtin:math",
                                                        "builtin:general_knowledge"])
    args = ap.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from harness.accel import attention
    from harness.eval import scoring, goldensets
    from harness import models
    from harness.config import recipe
    tok = AutoTokenizer.from_pretrained(args.config)
    sets = [goldensets.load(p) for p in args.goldensets]
    plan = models.DevicePlan("cuda", "bfloat16", bf16=True, gradient_checkpointing=False)

    def build(lora: bool):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config),
                                             dtype=torch.bfloat16).cuda().eval()
        if lora:
            m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.02)
                if "lora_" in name:  # as the harness trains them on a GPU (train.cast_adapter)
                    p.data = p.data.to(torch.bfloat16)
            m.eval()
        return m

    def decode(m, kernels) -> tuple[dict, list[float]]:  # kernels(m): a new context a pass
        out, times = {}, []
        for _ in range(2):  # the first pass pays what a process pays once; the second does not
            torch.cuda.synchronize()
            t = time.perf_counter()
            with kernels(m):
                for gs in sets:
                    texts = [scoring.render(tok, scoring.chat_prompt(tok, p))
                             for p in gs.prompts]
                    out[gs.name] = scoring.generate(m, tok, texts, gs.manifest.max_new_tokens,
                                                       256)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return out, times

    def agree(a: dict, b: dict) -> str:
        return ", ".join(f"{k} {sum(x == y for x, y in zip(a[k], b[k]))}/{len(a[k])}" for k in a)

    base = build(False)
    # without cuDNN first: its first pass also pays the process's own first CUDA work
    new, t_new = decode(base, attention.scoring_kernels)
    old, t_old = decode(base, lambda m: contextlib.nullcontext())
    print(f"base, SDPA as torch picks it: passes {t_old[0]:.2f} / {t_old[1]:.2f} s; without "
          f"cuDNN: {t_new[0]:.2f} / {t_new[1]:.2f} s; greedy outputs equal: {agree(old, new)}")
    del base
    spec = recipe.ModelSpec(name="random")
    lora = build(True)
    old, t_old = decode(lora, attention.scoring_kernels)
    merged = models.merged_for_scoring(lora, spec, plan)
    new, t_new = decode(merged, attention.scoring_kernels)
    print(f"LoRA unmerged: passes {t_old[0]:.2f} / {t_old[1]:.2f} s; merged: {t_new[0]:.2f} / "
          f"{t_new[1]:.2f} s; greedy outputs equal: {agree(old, new)}")


if __name__ == "__main__":
    main()
