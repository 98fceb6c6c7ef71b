"""PyTorch's fused RMSNorm in place of transformers' own, for training on a GPU.

A Llama-family RMSNorm is eight elementwise kernels forward (upcast, square, mean, add, rsqrt,
multiply, downcast, weight) and about as many backward. A LoRA step of a small model is bound by
kernel launches, not by the GPU (docs/benchmarks.md: ~3.5k launches a step at 135M), and the two
norms of every layer are a large share of them. `torch.nn.functional.rms_norm` is one fused
kernel each way; it computes in fp32 and rounds once, where the module rounds to the model's
dtype before the weight, so results differ by a bf16 rounding.

Only norms computing `weight * x / rms(x)` are swapped (Gemma's `(1 + weight)` is not), and only
while training: `harness.train.trainers` puts the module's own forward back afterwards.
"""
from __future__ import annotations

import contextlib

from harness.core import fences

# classes whose forward is weight * (x * rsqrt(mean(x^2) + variance_epsilon)) in the input dtype
FUSABLE = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def _fused_forward(module):
    import torch.nn.functional as F

    def forward(hidden_states):
        if hidden_states.dtype != module.weight.dtype:  # e.g. fp32 norms of a QLoRA model
            return type(module).forward(module, hidden_states)
        return F.rms_norm(hidden_states, module.weight.shape, module.weight,
                          module.variance_epsilon)
    return forward


@contextlib.contextmanager
def fused_norms(model, enabled: bool):
    """Swap the fusable RMSNorm modules of `model` to the fused kernel; yields how many."""
    enabled = enabled and fences.allowed("fused_norm")
    patched = [m for m in model.modules() if type(m).__name__ in FUSABLE] if enabled else []
    for m in patched:
        m.forward = _fused_forward(m)  # an instance attribute: nn.Module calls it first
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward
