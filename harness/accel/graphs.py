"""CUDA graphs for the decoder stack while training on a GPU.

A LoRA step of a small model is bound by the host, not the GPU: at 135M parameters a step
launches ~4.5k kernels from Python (PEFT's adapters, transformers' layers, autograd) and the GPU
is busy 86 ms of ~250 (docs/benchmarks.md). `torch.cuda.make_graphed_callables` records the
backbone's forward and backward (embeddings, every decoder layer, the final norm) once and
replays each as one graph launch; TRL's loop, the loss and the optimizer stay as they are.

A graph replays fixed shapes at fixed addresses, so every step's batch must look the same:
- the packed batch is padded to a multiple of max_length (`DevicePlan.pad_packed`);
- `StaticSequences` (on the host, after TRL's collator) pads it on to max_length a bin when it
  is at most a bin short (16 bins holding 15 bins' worth of tokens take as many as 16 full
  ones), makes the padding a few sequences instead of one a token, rounds the number of
  sequences up with empty ones and gives max_length as the longest;
- a batch shape is captured the second time it comes (its first step runs eagerly and warms up
  the kernels), up to MAX_SHAPES shapes; other shapes (the last, shorter batch) run eagerly.
  A process that has already run that shape through a model of the same shape (a sweep's later
  trials, `WARM`) captures it the first time: the eager step would warm nothing, and it costs
  ~0.3-0.4 s, a tenth of a 2-GPU trial of 27 steps (docs/benchmarks.md). A batch of fewer
  sequences than a captured graph holds replays that graph, with empty sequences added.
Anything else (evaluation, generation, a batch with an attention mask) runs the model's own
forward, and the graphs are dropped when training ends.

Training runs on the capture's stream (`capture_stream` says why). Under data parallel (DDP)
the graphs hold no collective: DDP wraps the whole model, the graphed backward hands the
parameters' gradients to autograd as one node, and DDP's gradient hooks fire on them after the
replay, so the all-reduce runs outside the graph as it does eagerly. Each rank
captures on its own when it has seen a shape twice; ranks whose shapes differ simply replay
different graphs (or run eagerly) within the same step.
"""
from __future__ import annotations

import contextlib
import math
import sys
from collections import Counter

from harness.core import fences

MAX_SHAPES = 2
SEQUENCES_MULTIPLE = 64  # sequences a batch, rounded up: one graph covers most batches
CU = ("cu_seq_lens_q", "cu_seq_lens_k")  # a batch's sequence bounds, a sequence's slot each
# (model signature, batch key) pairs this process has run eagerly: their kernels are loaded,
# tuned and compiled, so a new model of the same signature can capture such a batch at once
WARM: set = set()


def blocker(config, plan, recipe, packed: bool) -> str | None:
    """Why the graphs cannot be used for this run, or None. `packed`: the trainer packs its
    batches padding-free (harness.train knows)."""
    if not plan.cuda_graphs:
        return "off"
    untested = fences.why_not("cuda_graphs")  # a library outside the versions tested with
    checks = [
        (untested is not None, untested),
        (not packed, "batches are not padding-free packed"),
        (not getattr(config, "pad_to_multiple_of", None),
         "trainer.pad_to_multiple_of is unset, so every batch has a new length"),
        # the graph's gradient buffers become the parameters' .grad; a second micro-batch would
        # overwrite the first's before adding itself
        (config.gradient_accumulation_steps > 1, "trainer.gradient_accumulation_steps > 1"),
        (config.gradient_checkpointing, "trainer.activation_checkpointing"
         if hasattr(config, "activation_checkpointing") else "trainer.gradient_checkpointing"),
        # its thread pins batches with CUDA calls, which fail a capture running beside them
        (config.dataloader_pin_memory, "trainer.dataloader_pin_memory"),
        (config.neftune_noise_alpha is not None, "trainer.neftune_noise_alpha (NEFTune's hook)"),
        (config.use_liger_kernel, "trainer.use_liger_kernel"),
        (config.torch_compile, "trainer.torch_compile"),
        (recipe.model.quantization != "none", "model.quantization"),
    ]
    return next((why for bad, why in checks if bad), None)


class StaticSequences:
    """TRL's padding-free collator, its batches made the same shape every step: as many tokens
    as their bins hold at most, sequence bounds rounded up to a multiple of `multiple`."""

    def __init__(self, collator, max_length: int, multiple: int = SEQUENCES_MULTIPLE):
        self.collator, self.max_length, self.multiple = collator, max_length, multiple

    def __getattr__(self, name):  # the wrapped collator's own attributes (pad_token_id, ...)
        if name == "collator":  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, examples):
        import torch
        out = self.collator(examples)
        cu = out.get("cu_seq_lens_q")
        if cu is None:
            return out
        total = out["input_ids"].shape[1]
        real = sum(len(e["input_ids"]) for e in examples)
        # as long as its bins full: a batch whose bins hold fewer tokens (15 bins' worth in 16)
        # is no second shape. Only up to one bin short: rows that are not bins (evaluation with
        # eval_packing off) are not padded to max_length each.
        full = len(examples) * self.max_length
        if not total < full <= total + self.max_length:
            full = total
        if full > total:
            fills = {"input_ids": self.collator.pad_token_id, "labels": -100}
            for name, v in out.items():
                if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == (1, total):
                    out[name] = torch.cat([v, v.new_full((1, full - total, *v.shape[2:]),
                                                         fills.get(name, 0))], 1)
        if real < full:  # TRL makes each padding token a sequence of its own: make them a few
            pad = torch.arange(full - real) % self.max_length  # of max_length at most
            out["position_ids"][0, real:] = pad.to(out["position_ids"].dtype)
            cu = torch.cat([cu[cu <= real], cu.new_tensor(
                [*range(real + self.max_length, full, self.max_length), full])])
        n = cu.numel() - 1
        cu = torch.cat([cu, cu.new_full((math.ceil(n / self.multiple) * self.multiple - n,),
                                        full)])  # empty sequences at the end
        out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = cu
        longest = max(self.max_length, int(cu.diff().max()))
        out["max_length_q"] = out["max_length_k"] = longest
        if "seq_idx" in out:
            out["seq_idx"] = torch.repeat_interleave(
                torch.arange(cu.numel() - 1, dtype=torch.int32), cu.diff())[None]
        return out


def _tensors(key) -> dict:
    """A batch key's tensors: name -> (shape, dtype)."""
    return {name: (shape, dtype) for name, shape, dtype in key[0]}


def _stack(forward, names: tuple[str, ...], constants: dict, backbone):
    """The backbone as a module whose forward takes the batch's tensors positionally (what
    make_graphed_callables records) and returns the last hidden state."""
    import torch

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone  # its parameters are the graph's inputs

        def forward(self, *tensors):
            return forward(**dict(zip(names, tensors)), **constants).last_hidden_state
    return Stack()


class GraphedBackbone:
    """Replaces the backbone's forward: a graph for batch shapes seen before, its own otherwise."""

    def __init__(self, backbone):
        import torch
        self.backbone, self.own = backbone, backbone.forward
        self.seen: Counter = Counter()
        self.graphs: dict = {}
        # the shapes' graphs share one memory pool: two of them never run within one step, and
        # a step's outputs and gradients are used up before the next step replays
        self.pool = torch.cuda.graph_pool_handle()
        self.steps = 0
        self.failed: str | None = None
        # the parameters' names, shapes, dtypes and trainability: a LoRA rank or a dtype apart
        # is a model whose kernels have not run yet
        self.signature = hash((type(backbone).__qualname__, tuple(
            (n, tuple(p.shape), p.dtype, p.requires_grad)
            for n, p in backbone.named_parameters())))

    def key(self, kwargs: dict):
        import torch
        if not (self.backbone.training and torch.is_grad_enabled()) or self.failed:
            return None
        if (kwargs.get("cu_seq_lens_q") is None or kwargs.get("inputs_embeds") is not None
                or kwargs.get("attention_mask") is not None
                or kwargs.get("past_key_values") is not None
                or any(kwargs.get(k) for k in ("output_attentions", "output_hidden_states"))):
            return None
        use_cache = kwargs.get("use_cache")  # a KV cache is filled on the host, step by step
        if use_cache or (use_cache is None and getattr(self.backbone.config, "use_cache", False)):
            return None
        tensors = tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in kwargs.items()
                               if isinstance(v, torch.Tensor)))
        constants = tuple(sorted((k, v) for k, v in kwargs.items()
                                 if v is not None and not isinstance(v, torch.Tensor)))
        if any(isinstance(v, (list, dict)) for _, v in constants):
            return None
        autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        return tensors, constants, autocast

    def __call__(self, *args, **kwargs):
        key = None if args else self.key(kwargs)
        if key is None:
            return self.own(*args, **kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            key, kwargs = self.roomier(key, kwargs)
            graph = self.graphs.get(key)
        if graph is None:
            self.seen[key] += 1
            warm = (self.signature, key) in WARM
            if (self.seen[key] < 2 and not warm) or len(self.graphs) >= MAX_SHAPES:
                out = self.own(**kwargs)
                WARM.add((self.signature, key))
                return out
            graph = self.capture(key, kwargs, retry=self.seen[key] < 2)
            if graph is None:
                return self.own(**kwargs)
        from transformers.modeling_outputs import BaseModelOutputWithPast
        self.steps += 1
        hidden = graph(*(kwargs[name] for name, _, _ in key[0]))
        return BaseModelOutputWithPast(last_hidden_state=hidden)

    def roomier(self, key, kwargs: dict):
        """A captured key whose batch is this one's but for more sequence slots, and the batch
        with empty sequences added to fit it; else `key` and `kwargs` as they are. A batch of
        fewer sequences than most (63 where most have 64-127) then replays the common graph
        instead of running eagerly and taking a graph of its own."""
        import torch
        mine = _tensors(key)
        if not set(CU) <= set(mine):
            return key, kwargs
        n = mine[CU[0]][0][0]
        fits = {}
        for k in self.graphs:
            theirs = _tensors(k)
            slots = theirs.get(CU[0], ((0,), None))[0][0]
            if k[1:] == key[1:] and slots > n and theirs == {
                    **mine, **{name: ((slots,), mine[name][1]) for name in CU}}:
                fits[k] = slots
        if not fits:
            return key, kwargs
        wider = min(fits, key=fits.get)
        padded = dict(kwargs)
        for name in CU:  # cumulative lengths: an empty sequence repeats the total
            padded[name] = torch.cat([kwargs[name], kwargs[name][-1:].expand(fits[wider] - n)])
        return wider, padded

    def capture(self, key, kwargs: dict, retry: bool = False):
        """The graph of `key`'s batch, or None. `retry`: a failure is not the last try; the
        shape runs eagerly once and is captured the next time it comes."""
        import torch
        names = tuple(name for name, _, _ in key[0])
        stack = _stack(self.own, names, dict(key[1]), self.backbone)
        sample = tuple(kwargs[n].clone() for n in names)
        enabled, dtype = key[2]
        torch.cuda.empty_cache()  # the eager steps' cached blocks, for the graph's pool
        try:
            # make_graphed_callables refuses autocast's weight cache; the graph holds casts anyway
            with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
                # no warm-up: this shape's eager step ran just before
                graph = torch.cuda.make_graphed_callables(stack, sample, num_warmup_iters=0,
                                                          pool=self.pool)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            # the capture's end reports "a previous error during capture": say which
            cause = e.__context__ if isinstance(e.__context__, Exception) else e
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            # a capture that fails before its end leaves the CUDA generator marked as capturing,
            # and every later random op (dropout) raises; a copy of its state is not marked
            gen = torch.cuda.default_generators[torch.cuda.current_device()]
            gen.graphsafe_set_state(gen.clone_state())
            torch.cuda.empty_cache()
            if retry:  # this model may hold state its first forward sets up: warm it first
                WARM.discard((self.signature, key))
                # the failed capture leaves its pool marked as being recorded to
                self.pool = torch.cuda.graph_pool_handle()
                return None
            self.failed = f"capture failed: {first}"
            print(f"harness: CUDA graphs off for the rest of training ({self.failed})",
                  file=sys.stderr)
            return None
        self.graphs[key] = graph
        return graph


@contextlib.contextmanager
def capture_stream():
    """The block runs on the stream graphs are captured on (torch.cuda.graph's
    default_capture_stream), ordered after the work before it and before the work after it.

    Why: autograd records the stream a parameter's gradient-accumulation node was made on, and
    a backward that hands it a gradient from another stream makes that stream wait, and warns
    ("The AccumulateGrad node's stream does not match the stream of the node that produced the
    incoming gradient"). Eagerly the nodes are made afresh each step, but two keep them:
    make_graphed_callables keeps the captured forward's outputs, whose autograd graph holds the
    nodes the capture made (on the capture stream), and every replay's gradients then came from
    the default stream; and DDP makes them once, when it wraps the model: made on the default
    stream, the capture's backward would make the default stream wait on the capturing one,
    which CUDA refuses ("operation would make the legacy stream depend on a capturing blocking
    stream"). With every step on the capture stream, there is nothing to wait for."""
    import torch
    if torch.cuda.graph.default_capture_stream is None:  # torch.cuda.graph makes it lazily
        torch.cuda.graph.default_capture_stream = torch.cuda.Stream()
    stream, caller = torch.cuda.graph.default_capture_stream, torch.cuda.current_stream()
    stream.wait_stream(caller)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        caller.wait_stream(stream)


@contextlib.contextmanager
def cuda_graphs(model, enabled: bool):
    """Train `model`'s backbone through CUDA graphs inside the block, on the capture's stream;
    yields the GraphedBackbone (None when off). The backbone's own forward is back afterwards
    and the graphs are freed."""
    if not enabled:
        yield None
        return
    backbone = getattr(model, model.base_model_prefix, None)
    if backbone is None or backbone is model:
        yield None
        return
    graphed = GraphedBackbone(backbone)
    backbone.forward = graphed  # an instance attribute: nn.Module calls it first
    try:
        with capture_stream():
            yield graphed
    finally:
        del backbone.forward
        graphed.graphs.clear()
        import torch
        torch.cuda.empty_cache()
