"""GRPO's completions decoded with the LoRA adapter merged into the base weights.

TRL samples a GRPO step's completions through the policy's own `generate`. With LoRA on every
linear layer, each linear of each decoding step is four kernels (the base layer, dropout, A, B)
instead of one: on a GPU a small model's decoding is bound by those launches (~75 ms a token on
an H200 for SmolLM2-135M, docs/benchmarks.md). Merged, a decoding step costs what the base
model's costs. Around each `generate` of the trained PeftModel:

1. `merge_adapter()` (peft's own) adds each B·A·scale into its base weight;
2. the completions are decoded;
3. `unmerge_adapter()` takes them out again, and the base weights are then copied back from a
   copy taken once at the start: merging and unmerging in bf16 rounds, and without the copy the
   frozen base would drift a little every step. The base is frozen under LoRA, so the copy
   stays right for the whole run.

With `compiled` (the recipe's `eval.decoding`, decided as for golden sets by
`evaluation.compiled_decoding` over the rollouts' decoding steps), each rollout decodes with a
static KV cache that transformers compiles into CUDA graphs: TRL turns compiling off for its own
generation config (`disable_compile`), so a copy of it asks for the static cache. Prompts are
left-padded further to a multiple of 64 (a handful of cache shapes, each compiled once a run)
and those columns are cut off again before TRL sees the output. Merging writes the base
weights in place, so the captured graphs keep reading the current policy.

The completions are the policy's as training sees it, minus the adapter's dropout (the merged
weights are the adapter's eval-mode function). Skipped, with the reason returned, where
merging is not exact or not cheap: quantized base weights (merging re-quantizes them), no
adapter, or more than one adapter.
"""
from __future__ import annotations

import contextlib


def why_not(model, config=None, enabled: bool = True) -> str | None:
    """Why `model`'s rollouts cannot decode merged (None: they can). `enabled` off (the device
    plan's `merged_rollouts`): TRL's own rollouts through the unmerged adapter, a benchmark's
    baseline (bench/grpo_speed.py)."""
    if not enabled:
        return "off"
    if config is not None and (getattr(config, "use_vllm", False) or
                               getattr(config, "use_transformers_continuous_batching", False)):
        return "another generation engine"  # vLLM merges for itself; CB calls generate_batch
    if not hasattr(model, "merge_adapter") or not hasattr(model, "peft_config"):
        return "no LoRA adapter"
    if len(model.peft_config) != 1:
        return "more than one adapter"
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return "quantized base weights"
    return None


def _base_weights(model) -> list:
    from peft.tuners.lora import LoraLayer
    return [m.get_base_layer().weight for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def merged(model, config=None, compiled: bool = False, enabled: bool = True):
    """While open, `model.generate` decodes with the adapter merged (and compiled: see the
    module's doc); the base weights are exactly what they were after each call. Yields why
    rollouts do not decode merged, or None (`enabled`: as why_not)."""
    why = why_not(model, config, enabled)
    if why is not None:
        yield why
        return
    import torch
    weights = _base_weights(model)
    with torch.no_grad():
        kept = [w.detach().clone() for w in weights]
    own = model.generate

    def generate(*args, **kwargs):
        with torch.no_grad():
            model.merge_adapter()
        try:
            return (static(own, args, kwargs) if compiled else own(*args, **kwargs))
        finally:
            with torch.no_grad():
                model.unmerge_adapter()
                for w, k in zip(weights, kept):
                    w.copy_(k)

    model.generate = generate
    try:
        yield None
    finally:
        del model.generate


def static(generate, args: tuple, kwargs: dict):
    """`generate` with a static KV cache it compiles, prompts left-padded to a multiple of 64;
    returns what `generate` would have for the prompts as given."""
    import copy

    import torch
    config = kwargs.get("generation_config")
    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    if args or config is None or ids is None or mask is None:
        return generate(*args, **kwargs)  # not TRL's call: as asked
    config = copy.deepcopy(config)
    config.cache_implementation, config.disable_compile = "static", False
    extra = -ids.shape[1] % 64
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    kwargs = {**kwargs, "generation_config": config,
              "input_ids": torch.nn.functional.pad(ids, (extra, 0), value=pad),
              "attention_mask": torch.nn.functional.pad(mask, (extra, 0), value=0)}
    from harness.eval.scoring import compiled_precision
    with compiled_precision():
        return generate(**kwargs)[:, extra:]
