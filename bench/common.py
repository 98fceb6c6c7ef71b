"""What the GPU benchmarks share: a same-shape model with random weights (real weights cannot
travel to the GPU machine), built from a config folder such as ../shared/anchors/smollm2-135m."""
from __future__ import annotations


def random_model(config_dir: str, out: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(config_dir)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out
