"""PyTorch's fused RMSNorm in place of transformers' own, for training on a GPU.

A Llama-family RMSNorm is eight elementwise kernels forward (upcast, square, mean, add, rsqrt,
multiply, downcast, weight) and about as many backward. A LoRA step of a small model is bound by
kernel launches, not by the GPU (docs/benchmarks.md: ~3.5k launches a step at 135M), and the two
norms of every layer are a large share of them. `torch.nn.functional.rms_norm` is one fused
kernel each way; it computes in fp32 and rounds once, where the module rounds to the model's
dtype before the weight, so results differ by a bf16 rounding.

Only norms computing `weight * x / rms(x)` are swapped (Gemma's `(1 + weight)` is not), and only
while training: `harness.train.trainers` gives each module its own class back afterwards.

Each norm's class is swapped for a subclass whose forward is the fused one, rather than a
`forward` set on the instance: from transformers 5.25 a model kernelizes itself (the `kernels`
package, now a dependency, on by default) at each `train()`/`eval()` that changes its mode, and
kernelizing pops a `forward` set on a hub-extensible layer such as these norms, so the fused one
was gone from the trainer's first `model.train()`. The subclass tells kernelizing to skip it,
through the `kernels` package's own `condition`. transformers' hub RMSNorm (Liger's) does not do
this job instead: CUDA only, fetched from the Hub as the model kernelizes (the GPU machines
here are offline).
"""
from __future__ import annotations

import contextlib
import functools

from harness.core import fences

# classes whose forward is weight * (x * rsqrt(mean(x^2) + variance_epsilon)) in the input dtype
FUSABLE = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def _never(module) -> bool:
    return False


@functools.cache
def fused_class(cls: type) -> type:
    """`cls` with PyTorch's fused kernel as its forward (one subclass a norm class)."""
    import torch.nn.functional as F

    def forward(self, hidden_states):
        if hidden_states.dtype != self.weight.dtype:  # e.g. fp32 norms of a QLoRA model
            return cls.forward(self, hidden_states)
        return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)

    fused = type(f"Fused{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    layer = getattr(cls, "kernel_layer_name", None)  # set by kernels' use_kernel_forward_from_hub
    if layer is not None:
        from kernels import replace_kernel_forward_from_hub
        replace_kernel_forward_from_hub(fused, layer, condition=_never)
    return fused


@contextlib.contextmanager
def fused_norms(model, enabled: bool):
    """Swap the fusable RMSNorm modules of `model` to the fused kernel; yields how many."""
    enabled = enabled and fences.allowed("fused_norm")
    patched = [m for m in model.modules() if type(m).__name__ in FUSABLE] if enabled else []
    own = [type(m) for m in patched]
    # a forward a kernelization left on the instance would win over the class's: kept aside
    kept = [m.__dict__.pop("forward", None) for m in patched]
    for m in patched:
        m.__class__ = fused_class(type(m))
    try:
        yield len(patched)
    finally:
        for m, cls, forward in zip(patched, own, kept):
            m.__class__ = cls
            if forward is not None:
                m.forward = forward
