"""Greedy decoding paths over every shipped golden set, in one process on one model (issue 47
item 1): wall seconds, new tokens/s, ms a decoding step, capture/warm-up seconds, peak GPU
memory, and greedy agreement with the harness's eager path.

(a) eager: harness.eval.scoring.generate as a run calls it (own_attention, scoring_kernels,
    equal length-sorted batches, each row to its set's max_new_tokens, dynamic cache);
(b) cb: transformers' continuous batching (`init_continuous_batching`, the manager's CUDA-graph
    warm-up, one request a row with its own max_new_tokens), settings printed;
(c) graphs@B: a static-KV-cache decode step (the model's own modules, Llama family) captured
    once per batch size with torch.cuda.CUDAGraph, no torch.compile; prefill eager; a finished
    row's slot is refilled from the queue, and once the queue is empty the live rows are packed
    into the smallest captured size that holds them, so finished rows stop costing;
(d) LoRA in place: a peft LoRA merged into the captured weights in place, replayed without
    recapture, agreement with eager decoding of the merged model; unmerged, a second adapter
    merged, replayed again.
ms a step: wall / decoding steps (the wall includes prefills; n/a for CB, whose forward passes
mix prefill and decode rows); capture/warm-up: (c) captures every size once, (b) the manager's
warm-up, both outside the wall. Agreement: exact text per golden set against (a), and where
texts differ the first differing token of the re-tokenized texts (min, median).
On a CPU (c) and (d) run their step without capture (a check of the slot logic and the step's
numerics only; their seconds mean nothing).

CPU:  PYTHONPATH=$PWD python bench/decode_paths.py --model tiny
GPU (carry [".whl", ".shared"]; .shared a copy of ../shared's anchors and data):
    T=$(mktemp -d) && python3 -m pip install -q --no-index --no-deps --no-compile \\
      --target "$T" .whl/*.whl && export PYTHONPATH="$T:$PWD" && \\
      HARNESS_SHARED=$PWD/.shared python3 bench/decode_paths.py \\
      --model random:.shared/anchors/smollm2-135m --json decode_paths.json
  real weights: ../shared/device/embedded.sh's three calls carry the model, then in the third
    export PYTHONPATH=/tmp/emb/site:$PWD && python3 bench/decode_paths.py \
      --model embedded:smollm2-135m-instruct --json decode_paths_real.json
  CB settings to try in the same process: --cb-page 32 64 256 --cb-requests 128 256 512
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SETS = ["math", "general_knowledge", "qa", "rewrite", "summarize", "classify", "gsm8k"]


@dataclass
class PathResult:
    name: str
    seconds: float
    new_tokens: int
    steps: int  # decoding steps (forward passes after the prefill) the path ran
    setup_s: float = 0.0  # capture or warm-up, outside `seconds`
    peak_gib: float = 0.0
    settings: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)  # set -> {same, n, first_diff_*}

    def row(self) -> str:
        same = sum(a["same"] for a in self.agreement.values())
        n = sum(a["n"] for a in self.agreement.values())
        per_step = f"{1000 * self.seconds / self.steps:.2f}" if self.steps else "n/a"
        return (f"| {self.name} | {self.seconds:.2f} | {self.new_tokens / self.seconds:,.0f} | "
                f"{per_step} | {self.setup_s:.2f} | "
                f"{self.peak_gib:.2f} | {same}/{n} |")


def load(name: str):
    """(model, tokenizer, device): 'tiny' (a 2-layer Llama with SmolLM2's tokenizer, as
    tests/conftest.py builds it), 'random:CONFIG_DIR' (that shape, random weights), or a model
    name as the harness resolves it (a folder, embedded:...), loaded as the harness scores."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from harness import models
    from harness.config import recipe
    from common import random_model  # bench/common.py (the script's folder is on sys.path)
    if name == "tiny":
        # ../shared beside the repository, as tests/conftest.py finds it
        shared = os.environ.get("HARNESS_SHARED", Path(__file__).resolve().parents[2] / "shared")
        tok = AutoTokenizer.from_pretrained(f"{shared}/anchors/smollm2-135m")
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=8, max_position_embeddings=2048, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, initializer_range=0.3)
        torch.manual_seed(0)
        name = tempfile.mkdtemp()
        LlamaForCausalLM(cfg).save_pretrained(name)
        tok.save_pretrained(name)
    elif name.startswith("random:"):
        name = random_model(name.split(":", 1)[1], tempfile.mkdtemp())
    spec = recipe.ModelSpec(name=name)
    plan = models.device_plan(spec)
    model = models.load_model(spec, plan).eval()
    return model, models.load_tokenizer(spec), plan.device


def golden_rows(tok, names: list[str]):
    """(set name, chat-templated prompt, cap) per row of every generating set, as scoring renders
    them; a set that does not load here (gsm8k needs its download) is said and skipped."""
    from harness.eval import goldensets, scoring
    rows = []
    for n in names:
        try:
            gs = goldensets.load(f"builtin:{n}")
        except Exception as e:  # noqa: BLE001 - a bench says what it skipped and goes on
            print(f"golden set {n}: skipped ({type(e).__name__}: {str(e)[:80]})")
            continue
        if not scoring.generates(gs, "causal-lm"):
            continue
        m = gs.manifest
        rows += [(gs.name, scoring.render(tok, scoring.chat_prompt(tok, p, m.system_prompt)),
                  m.max_new_tokens) for p in gs.prompts]
    return rows


def agreement(tok, sets: list[str], ref: list[str], out: list[str]) -> dict:
    """Per golden set: exact-match share, and where outputs differ, the first differing token
    (of the decoded texts re-tokenized: (a) returns text only)."""
    res = {}
    for s in dict.fromkeys(sets):
        idx = [i for i, x in enumerate(sets) if x == s]
        diffs = []
        for i in idx:
            if ref[i] != out[i]:
                a, b = (tok(x, add_special_tokens=False)["input_ids"] for x in (ref[i], out[i]))
                diffs.append(next((k for k, (x, y) in enumerate(zip(a, b)) if x != y),
                                  min(len(a), len(b))))
        res[s] = {"same": len(idx) - len(diffs), "n": len(idx),
                  "first_diff_min": min(diffs, default=None),
                  "first_diff_median": statistics.median(diffs) if diffs else None}
    return res


def counted(toks: list[list[int]], eos: int) -> int:
    """New tokens as the eager path counts them: a closing eos is padding there."""
    return sum(len(x) - (bool(x) and x[-1] == eos) for x in toks)


class Timer:
    """Wall seconds and peak GPU memory of a block (synchronized on a GPU)."""

    def __init__(self, device: str):
        import torch
        self.torch, self.cuda = torch, device == "cuda"

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t
        self.peak_gib = self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0


def eager(model, tok, texts, caps, batch, device) -> tuple[PathResult, list[str]]:
    from harness.accel import attention
    from harness.core import context
    from harness.eval import scoring
    before = context.current().ledger.totals()
    with Timer(device) as t, attention.own_attention(model), attention.scoring_kernels(model):
        out = scoring.generate(model, tok, texts, caps, batch)
    after = context.current().ledger.totals()
    steps = after.get("decode_steps", 0) - before.get("decode_steps", 0)
    new = after.get("generated_tokens", 0) - before.get("generated_tokens", 0)
    return PathResult(f"eager b{batch}", t.seconds, new, steps, 0.0, t.peak_gib,
                      {"batch": batch}), out


def continuous(model, tok, texts, caps, device, args, page: int,
               requests: int) -> tuple[PathResult, list[str]]:
    """transformers' continuous batching: each row a request with its own cap; the manager's
    knobs set where this transformers has them (page_size from 5.17, block_size before)."""
    import dataclasses
    import inspect

    from transformers import GenerationConfig
    from transformers.generation import configuration_utils as cu
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in texts]
    want = {"page_size": page, "block_size": page,
            "max_memory_percent": args.cb_memory, "max_batch_tokens": args.cb_batch_tokens,
            "max_requests_per_batch": requests, "use_cuda_graph": device == "cuda",
            "auto_switch_to_flash": False, "allow_block_sharing": False,
            "use_async_batching": args.cb_async}
    cls = getattr(cu, "ContinuousBatchingConfig", None)
    if cls is None:
        raise RuntimeError("this transformers has no ContinuousBatchingConfig")
    names = {f.name for f in dataclasses.fields(cls)}
    if "page_size" in names:
        want.pop("block_size")
    settings = {k: v for k, v in want.items() if k in names and v is not None}
    cb_cfg = cls(**settings)
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(caps), eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    before_attn = model.config._attn_implementation
    if args.cb_attn:
        model.set_attn_implementation(args.cb_attn)
    from transformers.generation.continuous_batching import continuous_api
    hints = getattr(continuous_api, "WorkloadHints", None)  # sizes the cache to the work
    kw = {"generation_config": gen, "continuous_batching_config": cb_cfg,
          "workload_hints": hints and hints(max_prompt_length=max(map(len, ids)),
                                            max_generated_length=max(caps), num_requests=len(ids))}
    sig = inspect.signature(model.init_continuous_batching).parameters
    manager = model.init_continuous_batching(**{k: v for k, v in kw.items() if k in sig})
    with Timer(device) as w:
        if device == "cuda" and hasattr(manager, "warmup"):  # captures the graphs up front
            manager.warmup()
    settings["attn"] = model.config._attn_implementation
    results = {}
    with Timer(device) as t:
        manager.start()
        try:
            rid = [manager.add_request(x, request_id=f"r{i}", max_new_tokens=c)
                   for i, (x, c) in enumerate(zip(ids, caps))]
            while len(results) < len(rid):
                r = manager.get_result(timeout=1)
                if r is not None and r.is_finished():
                    results[r.request_id] = r
                elif r is None and not manager.is_running():
                    print("cb: the manager stopped before every request finished")
                    break
        finally:
            manager.stop(block=True, timeout=30)
            if hasattr(manager, "destroy"):
                manager.destroy()
    model.set_attn_implementation(before_attn)
    toks = [results[f"r{i}"].generated_tokens if f"r{i}" in results else []
            for i in range(len(ids))]
    errors = sum(1 for r in results.values() if r.error)
    if errors:
        print(f"cb: {errors} requests failed")
    out = [tok.decode(x, skip_special_tokens=True) for x in toks]
    # steps: not counted (CB's forward passes mix prefill and decode rows)
    return PathResult(f"cb p{page} r{requests}", t.seconds, counted(toks, tok.eos_token_id), 0,
                      w.seconds,
                      t.peak_gib, settings), out


class GraphDecoder:
    """A static-KV-cache greedy decode step over the model's own modules (Llama family), one
    CUDA graph a batch size; KV buffers shared by every size (a size b uses the first b slots),
    so weights changed in place (a merged adapter) are seen by the next replay."""

    def __init__(self, model, sizes: list[int], max_len: int, capture: bool):
        import torch
        self.torch, self.model, self.capture = torch, model, capture
        self.sizes, cfg, p = sorted(sizes), model.config, next(model.parameters())
        self.b_max, self.max_len, self.dev = self.sizes[-1], max_len, p.device
        heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (self.b_max, heads, max_len, self.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=self.dev) for _ in model.model.layers]
        self.v = [torch.zeros_like(x) for x in self.k]
        self.tok = torch.zeros(self.b_max, dtype=torch.long, device=self.dev)
        self.pos = torch.zeros(self.b_max, dtype=torch.long, device=self.dev)
        self.out, self.graphs = {}, {}
        self.capture_s = 0.0
        if capture:
            t = time.perf_counter()
            pool = torch.cuda.graph_pool_handle()
            for b in reversed(self.sizes):  # largest first: the smaller reuse its pool
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s), torch.inference_mode():
                    for _ in range(2):
                        self._step(b)  # warm-up off the default stream, as torch asks
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool), torch.inference_mode():
                    self.out[b] = self._step(b)
                self.graphs[b] = g
            torch.cuda.synchronize()
            self.capture_s = time.perf_counter() - t

    def _step(self, b: int):
        """One token for slots [0, b): tok at pos in, greedy next token out."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        torch, m = self.torch, self.model.model
        pos = self.pos[:b]
        h = m.embed_tokens(self.tok[:b, None])
        cos, sin = m.rotary_emb(h, pos[:, None])
        mask = (torch.arange(self.max_len, device=self.dev)[None] <= pos[:, None])[:, None, None]
        rows = torch.arange(b, device=self.dev)
        for i, layer in enumerate(m.layers):
            a, x = layer.self_attn, layer.input_layernorm(h)
            q = a.q_proj(x).view(b, 1, -1, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(b, 1, -1, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(b, 1, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i][rows, :, pos] = k[:, :, 0]
            self.v[i][rows, :, pos] = v[:, :, 0]
            # grouped-query attention without enable_gqa (the fused kernels may not take it):
            # a K/V head's query heads as its query rows (head h reads K/V head h // groups)
            o = torch.nn.functional.scaled_dot_product_attention(
                q.reshape(b, self.k[i].shape[1], -1, self.head_dim), self.k[i][:b],
                self.v[i][:b], attn_mask=mask, scale=a.scaling)
            h = h + a.o_proj(o.reshape(b, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.lm_head(m.norm(h))[:, -1].argmax(-1)

    def step(self, b: int):
        assert b in self.sizes, b  # only captured sizes run (checked uncaptured on a CPU too)
        if self.capture:
            self.graphs[b].replay()
            return self.out[b]
        with self.torch.inference_mode():
            return self._step(b)

    def prefill(self, tok, slots: list[int], ids: list[list[int]]) -> list[int]:
        """Prompts into `slots` (eager, left-padded, the model's own cache), first tokens out."""
        torch = self.torch
        width = max(map(len, ids))
        inp = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids],
                           device=self.dev)
        att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.dev)
        with torch.inference_mode():
            o = self.model(input_ids=inp, attention_mask=att,
                           position_ids=(att.cumsum(-1) - 1).clamp(min=0), use_cache=True)
            cache = getattr(o, "cache", None) or o.past_key_values  # renamed in 5.2x
            for i, layer in enumerate(cache.layers):
                for j, (s, x) in enumerate(zip(slots, ids)):
                    self.k[i][s, :, :len(x)] = layer.keys[j, :, width - len(x):]
                    self.v[i][s, :, :len(x)] = layer.values[j, :, width - len(x):]
            first = o.logits[:, -1].argmax(-1)
        self.pos[slots] = torch.tensor([len(x) for x in ids], device=self.dev)
        self.tok[slots] = first
        return first.tolist()

    def pack(self, live: list[int]) -> None:
        """Live slots moved to the front (0..len-1), in order, KV rows with them."""
        src = self.torch.tensor(live, device=self.dev)
        for buf in (*self.k, *self.v, self.tok, self.pos):
            buf[:len(live)] = buf[src]

    def decode(self, tok, ids: list[list[int]], caps: list[int], b_max: int, eos: int):
        """Greedy tokens per prompt (to eos or its cap); (tokens, steps run)."""
        sizes = [s for s in self.sizes if s <= b_max]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))  # less prefill padding
        out: list[list[int]] = [[] for _ in ids]
        slot_row: list[int | None] = [None] * sizes[-1]
        refill = max(1, sizes[-1] // 8)
        steps = 0

        def done(r: int) -> bool:
            return len(out[r]) >= caps[r] or (out[r] and out[r][-1] == eos)

        while order or any(r is not None for r in slot_row):
            free = [s for s, r in enumerate(slot_row) if r is None][:len(order)]
            # refill finished slots from the queue in groups: each prefill is a forward pass
            if free and len(free) >= min(len(order), refill):
                new, order = order[:len(free)], order[len(free):]
                for s, r, t in zip(free, new, self.prefill(tok, free, [ids[r] for r in new])):
                    out[r].append(t)
                    slot_row[s] = r
                slot_row = [None if r is not None and done(r) else r for r in slot_row]
                continue
            live = [s for s, r in enumerate(slot_row) if r is not None]
            if not order and live[-1] >= next(s for s in sizes if s >= len(live)):
                self.pack(live)  # queue empty: live rows to the front, a smaller size
                slot_row = [slot_row[s] for s in live] + [None] * (len(slot_row) - len(live))
                live = list(range(len(live)))
            b = next(s for s in sizes if s > live[-1])  # the smallest size holding every row
            nxt_t = self.step(b)
            nxt = nxt_t.tolist()
            steps += 1
            # a dead slot steps on until refilled: kept inside the buffers
            self.pos[:b] = (self.pos[:b] + 1).clamp(max=self.max_len - 1)
            self.tok[:b] = nxt_t
            for s in live:
                r = slot_row[s]
                out[r].append(nxt[s])
                if done(r):
                    slot_row[s] = None
        return [x[:c] for x, c in zip(out, caps)], steps


def graph_paths(model, tok, texts, caps, sets, ref, device, args) -> list[PathResult]:
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in texts]
    max_len = max(len(x) + c for x, c in zip(ids, caps)) + 1
    from harness.accel import attention
    with Timer(device) as t, attention.scoring_kernels(model):  # SDPA as eager scoring picks
        dec = GraphDecoder(model, sorted({*args.graph_sizes, *args.small_sizes}), max_len,
                           capture=device == "cuda")
    results = []
    for b in args.graph_sizes:
        with Timer(device) as r, attention.scoring_kernels(model):
            toks, steps = dec.decode(tok, ids, caps, b, tok.eos_token_id)
        out = [tok.decode(x, skip_special_tokens=True) for x in toks]
        label = f"graphs b{b}" + ("" if dec.capture else " (no capture: CPU)")
        results.append(PathResult(label, r.seconds, counted(toks, tok.eos_token_id), steps,
                                  dec.capture_s,
                                  max(r.peak_gib, t.peak_gib),
                                  {"sizes": [s for s in dec.sizes if s <= b], "max_len": max_len},
                                  agreement(tok, sets, ref, out)))
    return results, dec


def lora_demo(model, tok, dec, texts, caps, sets, batch, device, args) -> list[dict]:
    """Adapters merged into the captured weights in place; replay without recapture. Per
    adapter: merge seconds, whether every weight kept its storage, rows changed from the base,
    rows equal to eager decoding of the merged model."""
    import torch
    from peft import LoraConfig, get_peft_model
    ids = [tok(x, add_special_tokens=False)["input_ids"] for x in texts]

    def storage():
        return [p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n]
    ptrs = storage()
    base, _ = dec.decode(tok, ids, caps, args.graph_sizes[-1], tok.eos_token_id)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    peft_model.add_adapter("second", LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for seed, name in enumerate(("default", "second")):
        torch.manual_seed(seed)
        for n, p in peft_model.named_parameters():
            if f"lora_B.{name}" in n:
                torch.nn.init.normal_(p, std=0.02)
    checks = []
    for name in ("default", "second"):
        peft_model.set_adapter(name)
        with Timer(device) as m:
            peft_model.merge_adapter()  # peft's, as harness.models.merged_for_scoring calls it
        same_ptrs = ptrs == storage()
        toks, _ = dec.decode(tok, ids, caps, args.graph_sizes[-1], tok.eos_token_id)
        got = [tok.decode(x, skip_special_tokens=True) for x in toks]
        _, ref = eager(peft_model, tok, texts, caps, batch, device)
        changed = sum(a != b for a, b in zip(base, toks))
        same = sum(a["same"] for a in agreement(tok, sets, ref, got).values())
        print(f"lora {name} merged in place in {m.seconds:.3f} s (weights kept their storage: "
              f"{same_ptrs}): replay without recapture differs from the base on "
              f"{changed}/{len(toks)} rows; equal to eager decoding of the merged model on "
              f"{same}/{len(toks)}", flush=True)
        checks.append({"adapter": name, "merge_s": m.seconds, "same_storage": same_ptrs,
                       "changed_from_base": changed, "same_as_eager": same, "n": len(toks)})
        peft_model.unmerge_adapter()
    return checks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny",
                    help="tiny | random:CONFIG_DIR | a model name the harness resolves")
    ap.add_argument("--goldensets", nargs="+", default=SETS)
    ap.add_argument("--eager-batch", type=int, default=None, help="default: the harness's")
    ap.add_argument("--graph-sizes", type=int, nargs="+", default=[32, 64, 128, 256],
                    help="captured batch sizes; one run with each as the largest")
    ap.add_argument("--small-sizes", type=int, nargs="*", default=[4, 8, 16],
                    help="also captured: what the last rows shrink to")
    ap.add_argument("--cb-page", type=int, nargs="+", default=[64],
                    help="KV page (block) sizes, tokens; one CB run a page size x requests")
    ap.add_argument("--cb-memory", type=float, default=0.5, help="share of free memory for KV")
    ap.add_argument("--cb-batch-tokens", type=int, default=None, help="default: auto")
    ap.add_argument("--cb-requests", type=int, nargs="+", default=[256],
                    help="max requests a batch")
    ap.add_argument("--cb-async", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--cb-attn", default=None, help="attn_implementation for CB (default: "
                    "the model's; 5.17 names sdpa_paged / paged|sdpa)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["cb", "graphs", "lora"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch
    import transformers
    model, tok, device = load(args.model)
    rows = golden_rows(tok, args.goldensets)
    sets, texts, caps = map(list, zip(*rows))
    batch = args.eager_batch or (256 if device == "cuda" else 32)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{gpu}, {model.dtype}, transformers {transformers.__version__}, torch "
          f"{torch.__version__}; {len(texts)} prompts: "
          + ", ".join(f"{s} {sets.count(s)} x {c}" for s, c in dict(zip(sets, caps)).items()),
          flush=True)
    eager(model, tok, texts[:8], caps[:8], batch, device)  # the process's first CUDA work
    res, ref = eager(model, tok, texts, caps, batch, device)
    res.agreement = agreement(tok, sets, ref, ref)
    results = [res]
    print(f"{res.name}: {res.seconds:.2f} s", flush=True)
    for page, req in itertools.product(args.cb_page, args.cb_requests):
        if "cb" in args.skip:
            break
        try:
            r, out = continuous(model, tok, texts, caps, device, args, page, req)
            r.agreement = agreement(tok, sets, ref, out) if out else {}
            print(f"{r.name}: {r.seconds:.2f} s; settings {r.settings}", flush=True)
            results.append(r)
        except Exception as e:  # noqa: BLE001 - said, and the other paths still run
            print(f"cb: did not run here ({type(e).__name__}: {str(e)[:200]})", flush=True)
    dec = None
    if "graphs" not in args.skip:
        if device != "cuda":
            print("graphs: no CUDA here: the step runs uncaptured (slot logic and numerics "
                  "only, seconds mean nothing)")
        gr, dec = graph_paths(model, tok, texts, caps, sets, ref, device, args)
        results += gr
    print("\n| path | wall s | new tok/s | ms a step | capture/warm-up s | peak GiB | "
          "same as eager |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(r.row())
    print("\nagreement with eager per golden set (same/n; first differing token min, median):")
    for r in results[1:]:
        print(f"  {r.name}: " + "; ".join(
            f"{s} {a['same']}/{a['n']}" + (f" ({a['first_diff_min']}, {a['first_diff_median']})"
                                            if a["first_diff_min"] is not None else "")
            for s, a in r.agreement.items()))
    lora = []
    if dec is not None and "lora" not in args.skip:
        first = [i for i, s in enumerate(sets) if s == sets[0]]
        lora = lora_demo(model, tok, dec, [texts[i] for i in first], [caps[i] for i in first],
                  [sets[i] for i in first], batch, device, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": gpu, "results": [asdict(r) for r in results], "lora": lora}, f,
                      indent=1)


if __name__ == "__main__":
    main()
