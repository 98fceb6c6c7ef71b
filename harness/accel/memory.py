"""The GPU memory a training step will take, estimated from the model's config, and the plan that
fits it: gradient checkpointing, micro-batches with gradient accumulation, CUDA graphs.

No weights are read: a decoder's shape (hidden size, layers, intermediate size, heads, KV heads,
head size, vocabulary) gives its parameters, and the step's token budget (per-device batch x
max_length, packed) gives its activations. `estimate` states the formula term by term; `choose`
takes the fastest setting whose estimate fits the GPU's free memory with a margin.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

GiB = 2 ** 30
#: of the free memory, what a plan may fill: the rest is the allocator's fragmentation and
#: cuBLAS/NCCL workspaces that are not counted term by term
MARGIN = 0.90
OVERHEAD = 1 * GiB  # workspaces, the loader's batches, the optimizer's step temporaries
# TRL's fused LM head (trl.kernels.chunked_logprob): one [4,096 tokens x 32,768 vocab] tile
HEAD_TILE = 4096 * 32768
# bitsandbytes NF4 with double quantization: 4 bits a weight, an 8-bit scale a block of 64 and
# a 32-bit scale a block of 256 scales
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# the linear layers of a Llama/Qwen/Mistral decoder layer, and what feeds each
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's dimensions (Llama, Qwen2, Mistral and their kin)."""
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False  # the LM head shares the embedding's weights

    @classmethod
    def from_config(cls, config) -> Shape:
        """From a transformers config (or anything with its attribute names)."""
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = c.num_attention_heads
        return cls(c.hidden_size, c.num_hidden_layers, c.intermediate_size, heads,
                   getattr(c, "num_key_value_heads", None) or heads,
                   getattr(c, "head_dim", None) or c.hidden_size // heads, c.vocab_size,
                   bool(getattr(config, "tie_word_embeddings", False)))

    @classmethod
    def load(cls, path: str, revision: str | None = None, trust_remote_code: bool = False):
        """From a model folder or Hub id: its config.json only."""
        from transformers import AutoConfig
        return cls.from_config(AutoConfig.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code))

    def inputs(self) -> dict[str, tuple[int, int]]:
        """Each linear layer's (input, output) width."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, \
            self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """The decoder layers' linear weights: what 4-bit quantization shrinks."""
        return self.layers * sum(a * b for a, b in self.inputs().values())

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + embeddings + norms


@dataclass(frozen=True)
class Workload:
    """A training step as the trainer will run it."""
    batch: int  # rows a device step (per_device_train_batch_size)
    row_tokens: int  # tokens a row holds at most: max_length (x2 where chosen and rejected run)
    lora_r: int = 16  # 0: full fine-tuning
    lora_targets: tuple[str, ...] = LINEARS  # the decoder's linear layers LoRA wraps
    lora_dropout: bool = True  # peft's dropout copies each adapted layer's input
    dtype_bytes: int = 2  # the weights' and activations' dtype
    adapter_bytes: int = 2  # the LoRA weights', their gradients' and AdamW states' dtype
    quantized: bool = False  # model.quantization: 4bit
    fused_head: bool = True  # TRL's fused LM head: the logits are never materialized
    graphs_blocked: str | None = None  # why CUDA graphs cannot run here anyway, if so
    activations: bool = True  # False: the token budget is unknown (GRPO's prompts)


@dataclass(frozen=True)
class Pinned:
    """What the recipe sets itself: the plan keeps it."""
    checkpointing: bool | None = None  # trainer.gradient_checkpointing
    batch: bool = False  # trainer.per_device_train_batch_size or gradient_accumulation_steps
    graphs: bool | None = None  # model.cuda_graphs


@dataclass(frozen=True)
class Estimate:
    """Bytes, term by term (`estimate` says where each comes from)."""
    weights: int
    trainable: int  # the trained weights' gradients and AdamW states (+ LoRA's own weights)
    activations: int
    head: int
    graph_pool: int
    overhead: int = OVERHEAD

    @property
    def total(self) -> int:
        return (self.weights + self.trainable + self.activations + self.head + self.graph_pool
                + self.overhead)

    @property
    def static(self) -> int:
        """What no batch size, checkpointing or graph setting changes."""
        return self.weights + self.trainable + self.overhead


def layer_bytes(shape: Shape, work: Workload) -> int:
    """Bytes a token keeps for backward in one decoder layer, nothing recomputed.

    Elements saved (Llama-style layer, flash/varlen attention, SwiGLU; every linear layer's input
    is saved for its LoRA A or its own weight gradient): the attention norm's input and output
    (2h), q and k after RoPE and v (q + 2kv), the attention output (q), the MLP norm's input and
    output (2h), gate, up, silu(gate) and silu(gate) * up (4i): 4h + 2q + 2kv + 4i, in the
    activations' dtype. With LoRA dropout > 0, peft's dropout copies each adapted layer's input
    and keeps a one-byte mask of it; each adapter's r-wide A output is kept too.
    Calibrated on the H100 (docs/benchmarks.md, training speed): the 135M shape, 16 packed bins of
    1,024 tokens, LoRA r=16 without dropout, CUDA graphs: measured peak allocated 9.91 GiB;
    `estimate` gives 10.1 GiB before its overhead and graph pool (9.55 of it activations), and
    20.4 GiB in all against 18.9 GiB reserved (10.2 reserved without graphs; 11.1 estimated)."""
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, \
        shape.intermediate
    saved = (4 * h + 2 * q + 2 * kv + 4 * i) * work.dtype_bytes
    if work.lora_r:
        inputs = shape.inputs()
        adapted = [inputs[t][0] for t in work.lora_targets if t in inputs]
        saved += len(adapted) * work.lora_r * work.adapter_bytes
        if work.lora_dropout:
            saved += sum(adapted) * (work.adapter_bytes + 1)
    return saved


def estimate(shape: Shape, work: Workload, checkpointing: bool, micro_batch: int,
             graphs: bool) -> Estimate:
    """The peak of one training step of `micro_batch` rows, in bytes:

    - weights: the parameters in the plan's dtype; with 4-bit, the decoder's linear weights at
      NF4's 4.13 bits (embeddings, LM head and norms stay in the dtype);
    - trainable: LoRA (r x (in + out) a wrapped layer) weights, gradients and AdamW's two states
      in the adapter's dtype; full fine-tuning, the gradients and two states of every parameter
      in the weights' dtype (torch's AdamW keeps its states in the parameter's dtype);
    - activations, T = micro_batch x row_tokens tokens: without checkpointing every layer's
      `layer_bytes` x T, plus one layer's worth for the gradients in flight in backward; with
      transformers' gradient checkpointing each layer keeps only its input (h a token) and
      backward recomputes one layer at a time (its activations and its gradients: two layers'
      worth). The recompute costs a forward more a step (about a third more compute);
    - head: TRL's fused LM head (trl 1.16: SFT, DPO, KTO, GRPO) projects 4,096 tokens x 32,768
      vocabulary entries a tile and never holds the logits; it keeps the final hidden states and
      their fp32 gradient. Without it the logits are T x vocab in the dtype, upcast to fp32 in
      the loss and a fp32 gradient: 10 bytes a logit (2 + 4 + 4);
    - graph_pool: CUDA graphs keep the captured step's activations in their own pool, reserved
      beside the allocator's cache: measured +8.7 GiB reserved (18.9 with graphs, 10.2 without)
      on the calibration step above, 0.95x its activations; counted as 1x;
    - overhead: 1 GiB of workspaces and temporaries not counted above.
    """
    dense = shape.params - (shape.linear_params if work.quantized else 0)
    weights = dense * work.dtype_bytes + (
        int(shape.linear_params * NF4_BYTES) if work.quantized else 0)
    if work.lora_r:
        inputs = shape.inputs()
        lora = shape.layers * work.lora_r * sum(
            a + b for t, (a, b) in inputs.items() if t in work.lora_targets)
        trainable = lora * work.adapter_bytes * 4  # weight, gradient, two AdamW states
    else:
        trainable = shape.params * work.dtype_bytes * 3  # gradient, two AdamW states
    tokens = micro_batch * work.row_tokens if work.activations else 0
    per_layer = layer_bytes(shape, work) * tokens
    if checkpointing:
        activations = shape.layers * shape.hidden * work.dtype_bytes * tokens + 2 * per_layer
    else:
        activations = (shape.layers + 1) * per_layer
    if work.quantized:  # a layer's weight dequantized to the dtype while it runs
        activations += max(a * b for a, b in shape.inputs().values()) * work.dtype_bytes
    hidden_states = tokens * shape.hidden * (work.dtype_bytes + 4)
    logits = min(tokens, 4096) * 32768 * work.dtype_bytes if work.fused_head else \
        tokens * shape.vocab * 10
    pool = (shape.layers * layer_bytes(shape, work) * tokens) if graphs else 0
    return Estimate(weights, trainable, activations, hidden_states + logits if tokens else 0, pool)


@dataclass(frozen=True)
class Choice:
    """The setting `choose` picked, its estimate, and the memory it was measured against."""
    shape: Shape
    work: Workload
    checkpointing: bool
    micro_batch: int
    accumulation: int
    graphs: bool
    estimate: Estimate
    free: int
    fits: bool
    why_not: str | None = None  # a fitting choice that is not what the recipe pinned

    def line(self) -> str:
        """The plan in one line, for the log."""
        e = self.estimate
        dtype = "4-bit" if self.work.quantized else {2: "bf16", 4: "fp32"}.get(
            self.work.dtype_bytes, f"{self.work.dtype_bytes}-byte")
        ckpt = "with" if self.checkpointing else "without"
        if self.work.activations:
            batch = f"micro-batch {self.micro_batch} x {self.accumulation} accumulation" \
                if self.accumulation > 1 else \
                f"batch {self.micro_batch} x {self.work.row_tokens} tokens"
        else:
            batch = "activations not estimated (no bound on a row's tokens)"
        graphs = "CUDA graphs on" if self.graphs else (
            f"no CUDA graphs ({self.work.graphs_blocked})" if self.work.graphs_blocked
            else "CUDA graphs off")
        return (f"memory plan: {size(self.shape.params)} params, {dtype}, est. "
                f"{e.total / GiB:.0f} GiB of {self.free / GiB:.0f} GiB free {ckpt} gradient "
                f"checkpointing, {batch}; {graphs}")


def size(params: int) -> str:
    return f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"


def candidates(work: Workload, pinned: Pinned):
    """(checkpointing, micro-batch, graphs) from the fastest to the leanest: the graphed step
    (the GPU defaults: a small model's step is bound by kernel launches), the same step eager,
    gradient checkpointing (safest against an estimate that is off: a layer's input a token),
    then checkpointing on micro-batches that divide the batch (same effective batch). Graphs
    replay neither checkpointing nor accumulation (harness.accel.graphs.blocker)."""
    graphs_ok = work.graphs_blocked is None and pinned.graphs is not False
    ckpt = [pinned.checkpointing] if pinned.checkpointing is not None else [False, True]
    micro = [work.batch] if pinned.batch else \
        [work.batch // k for k in range(1, work.batch + 1) if work.batch % k == 0]
    for c in ckpt:
        for m in micro if c or pinned.checkpointing is False else [work.batch]:
            split = m < work.batch
            for g in ([True, False] if graphs_ok and not c and not split else [False]):
                if pinned.graphs and not g:
                    continue  # the recipe asked for graphs: only what they can replay
                yield c, m, g


def choose(shape: Shape, work: Workload, free: int, pinned: Pinned = Pinned()) -> Choice:
    """The first of `candidates` whose estimate fits MARGIN of `free` bytes. None fitting: the
    leanest the recipe allows, `fits` False when even that is over (the model itself does not
    fit), True with `why_not` when only the recipe's pinned keys keep it over."""
    budget = free * MARGIN
    options = list(candidates(work, pinned))
    if not options:  # model.cuda_graphs: true with checkpointing pinned on: graphs give way
        options = list(candidates(work, replace(pinned, graphs=None)))
    last = None
    for c, m, g in options:
        e = estimate(shape, work, c, m, g)
        last = Choice(shape, work, c, m, work.batch // m, g, e, free, e.total <= budget)
        if last.fits:
            return last
    leanest = estimate(shape, work, True, 1, False)
    if leanest.total <= budget:  # the recipe's own keys are what does not fit
        keys = [k for k, v in (("trainer.gradient_checkpointing", pinned.checkpointing is False),
                                ("trainer.per_device_train_batch_size", pinned.batch),
                                ("model.cuda_graphs", bool(pinned.graphs))) if v]
        return replace(last, fits=True, why_not=f"est. over {budget / GiB:.0f} GiB as the "
                       f"recipe sets {', '.join(keys)}; the step may run out of GPU memory")
    return replace(last, estimate=leanest, checkpointing=True, micro_batch=1,
                   accumulation=work.batch, graphs=False)


def refusal(choice: Choice) -> str:
    """Why the model cannot train on this GPU, and the way out, in one line."""
    e, free = choice.estimate, choice.free
    what = "LoRA" if choice.work.lora_r else "full fine-tuning"
    head = (f"{size(choice.shape.params)} params: {what} needs est. {e.total / GiB:.0f} "
            f"GiB even with gradient checkpointing and micro-batch 1 ({e.static / GiB:.0f} GiB "
            f"before activations) and this GPU has {free / GiB:.0f} GiB free")
    if choice.work.quantized:
        return head + "; a GPU with more memory, a smaller model or a shorter trainer.max_length"
    lora = "" if choice.work.lora_r else " with adapter.type: lora"
    return head + f"; quantize the base to 4 bits (model.quantization: 4bit{lora})"


def batch_keys(micro_batch: int, accumulation: int, trainer: dict) -> dict:
    """The TRL config keys of a micro-batched plan, unless the recipe sets the batch itself."""
    if accumulation <= 1 or {"per_device_train_batch_size",
                             "gradient_accumulation_steps"} & set(trainer):
        return {}
    return {"per_device_train_batch_size": micro_batch,
            "gradient_accumulation_steps": accumulation}
