"""Scoring a model on golden sets: batched greedy generation, reference perplexity, metrics,
and the per-example rows and records that carry them (the before/after comparison is
harness.eval.comparison). Knows nothing of MLflow or Optuna."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from harness.eval import goldensets, metrics
from harness.core import context
from harness.eval.goldensets import GoldenSet


@dataclass
class SetResult:
    name: str
    metrics: dict[str, float]
    #: per example: prompt, reference, prediction and one score per metric
    examples: list[dict] = field(default_factory=list)
    #: the metrics' inputs per example (predictions, nll, ...), for paired resampling
    columns: dict[str, list] = field(default_factory=dict)
    #: the arguments each metric was computed with (labels, normalization)
    metric_args: dict[str, dict] = field(default_factory=dict)
    #: how the outputs were produced (decoding_settings): logged results are reused (harness
    #: compare) only when these match
    decoding: dict = field(default_factory=dict)
    #: metric -> the harness metric module that compares it, where the name is not one
    #: (a benchmark's lm-eval metrics: harness.eval.lm_eval_tasks)
    modules: dict = field(default_factory=dict)

    def metric(self, name: str):
        """The loaded metric module behind one of this result's metrics."""
        return metrics.load(self.modules.get(name, name))


def results_to_json(results: dict[str, SetResult]) -> dict:
    """Golden set -> SetResult as JSON (what a run logs, and resumes and reports read back)."""
    import dataclasses
    return {k: dataclasses.asdict(v) for k, v in results.items()}


def results_from_json(d: dict) -> dict[str, SetResult]:
    return {k: SetResult(**v) for k, v in d.items()}


def chat_prompt(tok, prompt: str | list[dict], system: str | None = None) -> list[dict]:
    """The messages a golden-set prompt renders from (the one path for decoding, reference
    perplexity and response scores): a string as the user's turn, a conversation as it is;
    `system` (the manifest's) first, unless the conversation has its own."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    own = turns and turns[0].get("role") == "system"
    return ([{"role": "system", "content": system}] if system and not own else []) + turns


def render(tok, messages: list[dict], completion: str | None = None) -> str:
    """Text the model sees, the way TRL renders conversational prompt/completion rows."""
    if completion is None:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                   tokenize=False)


def _batches(order: list[int], size: int):
    """Batches of indices, with a progress bar where a person watches (stderr is a terminal)."""
    import sys

    from tqdm.auto import tqdm
    starts = range(0, len(order), size)
    for i in tqdm(starts, desc="scoring", unit="batch", leave=False,
                  disable=len(starts) < 2 or not sys.stderr.isatty()):
        yield order[i:i + size]


#: Compiled decoding pays a compile once per process and model structure (33-50 s cold on an
#: H200 for SmolLM2-135M, issue 17) to save ~15 ms a decoding step (plain `generate` takes
#: ~17 ms a step there, the compiled step ~2 ms). Below this many decoding steps over a process's
#: scorings, plain `generate` finishes first.
COMPILE_BREAK_EVEN_STEPS = 2500


@contextlib.contextmanager
def compiled_precision():
    """Compiled decoding's float32 matmuls on TF32 tensor cores, chosen here: on a GPU the
    weights are bf16, and the float32 matmuls left are transformers' rotary angles (inverse
    frequencies times positions, a product of one term each), which inductor otherwise
    compiles with a warning that TF32 is off. Scoped to the decoding (training keeps the
    recipe's `trainer.tf32`); the greedy agreement with IEEE float32 is in docs/benchmarks.md."""
    import torch
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def generates(gs: GoldenSet, task: str) -> bool:
    return task == "causal-lm" and not gs.is_preference


def decode_steps(goldens: list[GoldenSet], batch_size: int, max_new_tokens: int | None,
                 task: str) -> int:
    """At most this many decoding steps score `goldens` once: their generating sets share one
    pass (_generations), each batch at most the longest cap."""
    sets = [gs for gs in goldens if generates(gs, task)]
    if not sets:
        return 0
    rows = sum(len(gs.prompts) for gs in sets)
    return -(-rows // batch_size) * max(max_new_tokens or gs.manifest.max_new_tokens
                                        for gs in sets)


def compiled_decoding(choice: str, device: str, steps: int) -> bool:
    """eval.decoding: 'compiled' or 'eager' as asked; 'auto' compiles on a GPU when the
    process will decode at least COMPILE_BREAK_EVEN_STEPS steps (`steps`, over all its scorings)."""
    if choice != "auto":
        return choice == "compiled"
    return device == "cuda" and steps >= COMPILE_BREAK_EVEN_STEPS


def generate(model, tok, texts: list[str], max_new_tokens: int | list[int], batch_size: int,
             static_cache: bool = False, **generate_kwargs) -> list[str]:
    """Greedy continuations; left padding and batches sorted by cap and length (less padding,
    and the same batches every time, so results are deterministic).

    max_new_tokens: one cap for all, or one a text (several golden sets decoded in one pass: a
    row stops at its own cap, the batch when its last row does).
    static_cache: decode with a static KV cache, which transformers compiles into CUDA graphs:
    prompt lengths are padded to multiples of 64 and every batch keeps the same size, so a
    handful of shapes are compiled once and then replayed (compiled_decoding says when)."""
    import torch
    caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(texts)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # rows of one cap together (a set's short answers do not wait in a long set's batches)
    order = sorted(range(len(texts)), key=lambda i: (caps[i], lengths[i], i))
    out: list[str] = [""] * len(texts)
    extra = {"cache_implementation": "static"} if static_cache else {}
    # equal batches (520 prompts at most 256 a batch: 3 of 174, not 256 + 256 + 8)
    n_batches = -(-len(texts) // batch_size) if texts else 1
    size = -(-len(texts) // n_batches) if texts else batch_size
    side, tok.padding_side = tok.padding_side, "left"
    try:
        for idx in _batches(order, size):
            batch = [texts[i] for i in idx]
            row_caps = [caps[i] for i in idx]
            if static_cache:  # a short last batch would be a new shape to compile: fill it up
                batch += [batch[-1]] * (size - len(batch))
                row_caps += [row_caps[-1]] * (size - len(row_caps))
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                      pad_to_multiple_of=64 if static_cache else None).to(model.device)
            start = enc["input_ids"].shape[1]
            stop = {} if len(set(row_caps)) == 1 else {
                "stopping_criteria": _row_caps(row_caps, start, model.device)}
            with torch.inference_mode(), \
                    compiled_precision() if static_cache else contextlib.nullcontext():
                gen = model.generate(**enc, max_new_tokens=max(row_caps), do_sample=False,
                                     temperature=None, top_p=None, top_k=None,
                                     pad_token_id=tok.pad_token_id, **extra, **stop,
                                     **generate_kwargs)
            new = gen[:len(idx), start:]
            context.count("decoded_examples", len(idx))
            context.count("decode_steps", new.shape[1])
            for row, i in enumerate(idx):
                mine = new[row, :caps[i]]
                context.count("generated_tokens", int((mine != tok.pad_token_id).sum()))
                out[i] = tok.decode(mine, skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return out


def _row_caps(caps: list[int], start: int, device):
    """Transformers' stopping criterion that ends each row at its own cap (generate then pads
    it, and stops when every row has ended)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowCaps(StoppingCriteria):
        def __init__(self):
            self.caps = torch.tensor(caps, device=device)

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - start) >= self.caps
    return StoppingCriteriaList([RowCaps()])


def reference_nll(model, tok, prompts: list[str], fulls: list[str], batch_size: int):
    """Per example: summed NLL (nats) of the tokens of full[len(prompt):], and their count."""
    import torch
    nll, counts = [0.0] * len(prompts), [0] * len(prompts)
    context.count("nll_examples", len(prompts))
    side, tok.padding_side = tok.padding_side, "right"
    # length-sorted batches: less padding when several golden sets share the pass
    order = sorted(range(len(fulls)), key=lambda i: (len(fulls[i]), i))
    try:
        for idx in _batches(order, batch_size):
            enc = tok([fulls[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(model.device)
            labels = enc["input_ids"].clone()
            labels[enc["attention_mask"] == 0] = -100
            for row, i in enumerate(idx):
                n_prompt = len(tok(prompts[i], add_special_tokens=False)["input_ids"])
                labels[row, :n_prompt] = -100
            with torch.inference_mode():
                # no KV cache: scoring never decodes on from these logits
                logits = model(**enc, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            lp = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0),
                                                   reduction="none")
            lp = lp * (target != -100)
            for row, i in enumerate(idx):
                nll[i] = lp[row].sum().item()
                counts[i] = int((target[row] != -100).sum())
    finally:
        tok.padding_side = side
    return nll, counts


def reward_scores(model, tok, texts: list[str], batch_size: int) -> list[float]:
    """The one-logit head's score of each text (a reward model)."""
    import torch
    out: list[float] = []
    context.count("scored_responses", len(texts))
    side, tok.padding_side = tok.padding_side, "right"
    try:
        for idx in _batches(list(range(len(texts))), batch_size):
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out += model(**enc, use_cache=False).logits[:, 0].float().tolist()
    finally:
        tok.padding_side = side
    return out


def response_scores(model, tok, msgs: list[list[dict]], responses: list[str], batch_size: int,
                    task: str) -> list[float]:
    """How much the model likes each response to its prompt: a reward model's score, or a causal
    LM's summed log-probability of the response."""
    fulls = [render(tok, m, r) for m, r in zip(msgs, responses)]
    if task == "seq-cls":
        return reward_scores(model, tok, fulls, batch_size)
    nll, _ = reference_nll(model, tok, [render(tok, m) for m in msgs], fulls, batch_size)
    return [-x for x in nll]


def _generations(model, tok, sets: list[GoldenSet], batch_size: int,
                 max_new_tokens: int | None, compiled: bool) -> dict[str, dict]:
    """Every generating golden set in one decoding pass (each row to its set's cap) and one
    reference-NLL pass: set name -> its predictions, references, nll and token counts."""
    prompts, fulls, caps, spans = [], [], [], {}
    for gs in sets:
        msgs = [chat_prompt(tok, p, gs.manifest.system_prompt) for p in gs.prompts]
        spans[gs.name] = (len(prompts), len(prompts) + len(msgs))
        prompts += [render(tok, x) for x in msgs]
        fulls += [render(tok, x, ref) for x, ref in zip(msgs, gs.references)]
        caps += [max_new_tokens or gs.manifest.max_new_tokens] * len(msgs)
    if not prompts:
        return {}
    preds = generate(model, tok, prompts, caps, batch_size, static_cache=compiled)
    nll, counts = reference_nll(model, tok, prompts, fulls, batch_size)
    return {gs.name: {"predictions": preds[a:b], "references": gs.references, "nll": nll[a:b],
                      "tokens": counts[a:b]}
            for gs in sets for a, b in [spans[gs.name]]}


def _columns(model, tok, gs: GoldenSet, batch_size: int, task: str,
             generated: dict | None) -> tuple[dict, list[dict]]:
    """The inputs metrics take (predictions, nll, chosen_scores, ...) and the example rows;
    a generating set's columns come from `_generations`."""
    m = gs.manifest
    msgs = [chat_prompt(tok, p, m.system_prompt) for p in gs.prompts]
    if gs.is_preference:
        cols = {"chosen_scores": response_scores(model, tok, msgs, gs.chosen, batch_size, task),
                "rejected_scores": response_scores(model, tok, msgs, gs.rejected, batch_size,
                                                   task)}
        rows = [{"prompt": p, "chosen": c, "rejected": r, "chosen_score": cs, "rejected_score": rs}
                for p, c, r, cs, rs in zip(gs.prompts, gs.chosen, gs.rejected,
                                           cols["chosen_scores"], cols["rejected_scores"])]
        return cols, rows
    if task == "seq-cls":  # a reward model does not generate: it scores the references
        cols = {"reward_scores": response_scores(model, tok, msgs, gs.references, batch_size,
                                                 task)}
        return cols, [{"prompt": p, "reference": r} for p, r in zip(gs.prompts, gs.references)]
    return dict(generated), [{"prompt": p, "reference": r, "prediction": y}
                             for p, r, y in zip(gs.prompts, gs.references,
                                                generated["predictions"])]


def metric_names(manifest, task: str) -> list[str]:
    """The manifest's metrics; a reward model on a generation set reports reference_reward."""
    if task == "seq-cls" and goldensets.TASKS.get(manifest.task).generates:
        return ["reference_reward"]
    return list(manifest.metrics)


def evaluate_set(model, tok, gs: GoldenSet, batch_size: int = 32,
                 max_new_tokens: int | None = None, task: str = "causal-lm",
                 compiled: bool = False) -> SetResult:
    return evaluate_model(model, tok, [gs], batch_size, max_new_tokens, task, compiled)[gs.name]


def decoding_settings(gs: GoldenSet, task: str, max_new_tokens: int | None, dtype: str,
                      compiled: bool) -> dict:
    """What decides a model's outputs on `gs` besides the model: greedy decoding to this cap
    under this system prompt, or (a set that does not generate) the scoring task; and the
    numerics: the weights' dtype and compiled or eager decoding. bf16 greedy decoding is not
    invariant to the path: on an H200 the same model scored 0.200 compiled and 0.188 eager on
    85 problems (docs/benchmarks.md), so results of another path are not the same results."""
    out = {"task": task, "system_prompt": gs.manifest.system_prompt, "dtype": dtype}
    if generates(gs, task):
        out.update(greedy=True, max_new_tokens=max_new_tokens or gs.manifest.max_new_tokens,
                   compiled=compiled)
    return out


def _scored(gs: GoldenSet, task: str, columns: dict, examples: list[dict],
            decoding: dict) -> SetResult:
    values, args = {}, {}
    for name in metric_names(gs.manifest, task):
        args[name] = goldensets.metric_args(gs.manifest, name)
        res = metrics.compute(name, columns, args[name])
        values[name] = res[name]
        for ex, s in zip(examples, res["scores"]):
            ex[name] = s
    return SetResult(gs.name, values, examples, columns, args, decoding)


def check_fit(manifest, path: str) -> None:
    """Each metric must take what this kind of golden set provides."""
    from harness.core.errors import HarnessError
    provided = goldensets.TASKS.get(manifest.task).provides
    for i, name in enumerate(manifest.metrics):
        needs = metrics.features(name)
        if not needs <= provided:
            raise HarnessError(f"metric {name!r} does not fit a {manifest.task} golden set "
                               f"(it needs {', '.join(sorted(needs))})", file=path,
                               key=f"metrics.{i}")


def evaluate_model(model, tok, goldens: list[GoldenSet], batch_size: int = 32,
                   max_new_tokens: int | None = None, task: str = "causal-lm",
                   compiled: bool = False) -> dict[str, SetResult]:
    """`model` on every golden set: the generating ones decoded together in one pass."""
    from harness.accel import attention
    was_training = model.training
    model.eval()
    kernels = contextlib.nullcontext() if compiled else attention.scoring_kernels(model)
    # a set that scores itself (an lm-eval benchmark: harness.eval.lm_eval_tasks) gets the model
    sets = [gs for gs in goldens if not hasattr(gs, "score_with")]
    with attention.own_attention(model), kernels:  # own: a pruner's slice, mid-training
        generated = _generations(model, tok, [gs for gs in sets if generates(gs, task)],
                                 batch_size, max_new_tokens, compiled)
        columns = {gs.name: _columns(model, tok, gs, batch_size, task, generated.get(gs.name))
                   for gs in sets}
    dtype = str(getattr(model, "dtype", "")).removeprefix("torch.")
    out = {gs.name: _scored(gs, task, *columns[gs.name],
                            decoding_settings(gs, task, max_new_tokens, dtype, compiled))
           for gs in sets}
    for gs in goldens:  # lm-eval drives the model itself, with the library's own kernels
        if hasattr(gs, "score_with"):
            with context.timed("benchmarks"):
                out[gs.name] = gs.score_with(model, tok, batch_size)
            context.count("benchmark_documents", len(gs.prompts))
    model.train(was_training)
    return {gs.name: out[gs.name] for gs in goldens}


def flat_metrics(results: dict[str, SetResult]) -> dict[str, float]:
    """{'math/numeric_accuracy': 0.4, ...}: the keys recipes and reports use."""
    return {f"{s}/{k}": v for s, r in results.items() for k, v in r.metrics.items()}


INPUTS = ("prompt", "reference", "chosen", "rejected")


def paired_rows(before: SetResult, after: SetResult) -> list[dict]:
    """One row per example: its inputs, then each output and score as before/... and after/..."""
    rows = []
    for b, a in zip(before.examples, after.examples):
        row = {k: b[k] for k in INPUTS if k in b}
        row.update({f"before/{k}": v for k, v in b.items() if k not in INPUTS})
        row.update({f"after/{k}": v for k, v in a.items() if k not in INPUTS})
        rows.append(row)
    return rows


def genai_records(res: SetResult) -> list[dict]:
    """One MLflow GenAI evaluation record per example: the prompt as `inputs`, what the model
    produced (the response; the nll, scores... its metrics take) as `outputs`, the reference
    (or the chosen/rejected pair) as `expectations`."""
    records = []
    for i, ex in enumerate(res.examples):
        outputs = {"response": ex["prediction"]} if "prediction" in ex else {}
        outputs.update({k: v[i] for k, v in res.columns.items()
                        if k not in ("predictions", "references")})
        expectations = {k: ex[k] for k in ("chosen", "rejected") if k in ex}
        if "reference" in ex:
            expectations["expected_response"] = ex["reference"]
        records.append({"inputs": {"prompt": ex["prompt"]}, "outputs": outputs,
                        "expectations": expectations})
    return records


def record_scores(res: SetResult) -> list[dict]:
    """Each example's own scores, '<set>/<metric>' -> value, in genai_records' order."""
    return [{f"{res.name}/{m}": ex[m] for m in res.metrics} for ex in res.examples]


def example_scorers(res: SetResult) -> dict:
    """'<set>/<metric>' -> f(outputs, expectations): the harness's metric scoring one record
    of genai_records (MLflow's code scorers call it), equal to that example's own score."""
    def scorer(name: str):
        if name in res.modules:  # a benchmark's: lm-eval's own score of that document
            by_doc = {d: ex[name] for d, ex in zip(res.columns["doc_ids"], res.examples)}
            return lambda outputs, expectations: by_doc[outputs["doc_ids"]]

        def score(outputs: dict, expectations: dict) -> float:
            cols = {k: [v] for k, v in outputs.items() if k != "response"}
            if "response" in outputs:
                cols["predictions"] = [outputs["response"]]
            if "expected_response" in expectations:
                cols["references"] = [expectations["expected_response"]]
            return metrics.score_example(name, cols, res.metric_args.get(name))
        return score
    return {f"{res.name}/{m}": scorer(m) for m in res.metrics}
