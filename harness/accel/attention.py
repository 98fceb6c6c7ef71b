"""Variable-length attention for padding-free training, registered with transformers'
AttentionInterface under the name `harness_varlen`.

Padding-free batches (TRL's packing or `padding_free`) are one flat row of several sequences;
TRL's collator marks their bounds with `cu_seq_lens_q/k`. FlashAttention reads those and
attends within each sequence; SDPA instead gets a dense block-diagonal mask over the whole
flattened batch, so its cost grows with the square of the batch's tokens (16k tokens: 256M
mask entries per layer). Without the flash-attn package, PyTorch's own
`torch.nn.attention.varlen.varlen_attn` (a FlashAttention kernel) does the same job; on a CPU
the sequences are attended one by one with SDPA, which is what the tests run.

Only training uses it: the name has no mask function, so transformers builds no mask, and a
padded batch (generation, an unpacked eval) would be wrong. `harness.train.trainers` switches a model to it
for training and back afterwards.

transformers calls the attention function it finds registered under the model's attention
name, with the model's own arguments only: what a training run knows about it (the model's own
attention, what the kernel was found to take) reaches it through the `Training` that
`training_attention` makes current for its block (a context variable: scoped to the block and
its thread, as the training loop is).
"""
from __future__ import annotations

import contextlib
import inspect
from contextvars import ContextVar
from dataclasses import dataclass

NAME = "harness_varlen"
_registered = False


def register() -> str:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        AttentionInterface.register(NAME, varlen_attention_forward)
        _registered = True
    return NAME


@dataclass
class VarlenKernel:
    """What training learns about this torch's varlen kernel, handed from one run to the next
    (harness.train.trainers.Handover). `grouped_kv`: whether it takes fewer key/value heads than
    query heads (None: not tried yet; False from the start: the device plan's `grouped_kv` is
    off, a benchmark's baseline). FlashAttention groups the heads itself, which saves a copy of
    K and V every layer forward and the sum of their gradients backward; torch 2.11 passes them
    through without an `enable_gqa` flag, later releases ask for the flag, and their cuDNN path
    refuses it. Learned once, it also keeps a failing first try out of a later run's first
    step, which a sweep's later trials may capture into a CUDA graph (harness.accel.graphs)."""
    grouped_kv: bool | None = None


def _cuda_varlen(q, k, v, cu, max_len: int, scale: float, kernel: VarlenKernel):
    """q, k, v: (tokens, heads, dim). torch's varlen_attn changed its causal and GQA arguments
    between releases; pass whichever this torch takes (and learn it on `kernel`)."""
    import torch
    from torch.nn.attention.varlen import varlen_attn
    params = inspect.signature(varlen_attn).parameters
    kwargs = {"scale": scale}
    kwargs.update({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})
    if k.shape[1] != q.shape[1] and kernel.grouped_kv is not False:
        grouped = {"enable_gqa": True} if "enable_gqa" in params else {}
        try:
            out = varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs, **grouped)
            kernel.grouped_kv = True
            return out
        except RuntimeError as e:
            # it worked before, or memory ran out: this failure is not about the heads
            if kernel.grouped_kv or isinstance(e, torch.OutOfMemoryError):
                raise
            kernel.grouped_kv = False
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def _segmented_sdpa(q, k, v, cu, scale: float):
    import torch
    import torch.nn.functional as F
    bounds = cu.tolist()
    out = [F.scaled_dot_product_attention(q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True,
                                          scale=scale, enable_gqa=k.shape[0] != q.shape[0])
           for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return torch.cat(out, dim=1)  # (heads, tokens, dim)


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None,
                             dropout: float = 0.0, **kwargs):
    """transformers' attention signature: query (batch, heads, seq, dim) -> (batch, seq, heads,
    dim). The batch must be one flat padding-free row with `cu_seq_lens_q` given."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        raise RuntimeError(f"{NAME} attention needs padding-free batches (TRL packing or "
                           "padding_free); set model.attn_implementation to use another one")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if query.is_cuda:
        max_len = int(kwargs.get("max_length_q") or int(cu.diff().max()))
        training = _TRAINING.get()
        kernel = training.kernel if training is not None else VarlenKernel()
        out = _cuda_varlen(query[0].transpose(0, 1), key[0].transpose(0, 1),
                           value[0].transpose(0, 1), cu.to(query.device), max_len, scale, kernel)
        return out.unsqueeze(0), None
    out = _segmented_sdpa(query[0], key[0], value[0], cu, scale)
    return out.transpose(0, 1).unsqueeze(0), None


@dataclass
class Training:
    """A model training under `training_attention`: its config, the attention it had before
    (what scoring in the middle of training, a pruner's golden slice, must use, since
    generation pads its batches), and what its varlen kernel was found to take."""
    config: object
    own: str
    kernel: VarlenKernel


_TRAINING: ContextVar[Training | None] = ContextVar("harness_training_attention", default=None)


@contextlib.contextmanager
def training_attention(model, name: str | None, kernel: VarlenKernel | None = None):
    """Use attention `name` for the duration of training, then the model's own again.
    `kernel`: what earlier runs learned about the varlen kernel (default: nothing yet)."""
    if not name:
        yield
        return
    config = model.config
    before = config._attn_implementation
    model.set_attn_implementation(register() if name == NAME else name)
    token = _TRAINING.set(Training(config, before, kernel or VarlenKernel()))
    try:
        yield
    finally:
        model.set_attn_implementation(before)
        _TRAINING.reset(token)


@contextlib.contextmanager
def own_attention(model):
    """The model's own attention inside the block when training switched it to one that only
    takes padding-free batches (generation and reference perplexity are padded batches)."""
    config = getattr(model, "config", None)
    now = getattr(config, "_attn_implementation", None)
    training = _TRAINING.get()
    if now != NAME or training is None or training.config is not config:
        yield
        return
    model.set_attn_implementation(training.own)
    try:
        yield
    finally:
        model.set_attn_implementation(now)


@contextlib.contextmanager
def scoring_kernels(model):
    """On a GPU, eager scoring runs SDPA without its cuDNN backend. torch picks cuDNN's fused
    attention on Hopper, and cuDNN builds an execution plan for every new shape: decoding
    grows the keys by one each step, so a process's first pass over a golden set built one
    plan a step (H200, SmolLM2-135M shape, 40 prompts x 64 new tokens: 11.3 s for the first
    pass, 1.6 s once built). The memory-efficient kernel serves the same padded batches with no
    plan to build (the eager attention's first pass took 1.7 s). Compiled decoding keeps
    torch's choice: its shapes are fixed and compiled once."""
    if getattr(getattr(model, "device", None), "type", None) != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                      SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def policy_gradient_kernels(chosen: str | None):
    """GRPO's training (rollouts and the policy's forward and backward) runs SDPA with its math
    kernel, or FlashAttention where a batch needs no mask, in place of the fused kernels torch
    picks for padded batches, unless the recipe names an attention (`model.attn_implementation`
    `sdpa` keeps torch's choice). Why: on an H200 (torch 2.11, the embedded SmolLM2-135M after
    SFT, 2026-12-04) GRPO's gradient norm became NaN with a finite loss, at a step of a padded
    batch where one completion ran to max_completion_length (step 38 of three runs at lr 5e-5;
    step 98 at 1e-4); the same run with the math kernel, or with eager attention, trained on
    past step 270 with no NaN. The fused kernels' masked backward is known to give NaN
    gradients (pytorch/pytorch#178251 and #125674, open). The math kernel holds each layer's
    (rows, heads, tokens, tokens) scores: small for GRPO's short completions; a recipe whose
    long completions run out of memory can name `sdpa` and keep the guard's NaN check."""
    if chosen:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        yield
