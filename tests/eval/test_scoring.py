import math

import pytest
import torch

from harness.eval import scoring, goldensets
from harness.eval.comparison import compare
from harness import models
from harness.config.recipe import ModelSpec


def _load(model_dir: str):
    spec = ModelSpec(name=model_dir)
    plan = models.device_plan(spec)
    return models.load_model(spec, plan), models.load_tokenizer(spec)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return _load(tiny_model_dir)


@pytest.fixture(scope="module")
def lively(lively_model_dir):
    """A model whose greedy outputs depend on the prompt: decoding paths compared on it can
    disagree (conftest.lively_model_dir)."""
    return _load(lively_model_dir)


def _varied(tok, outputs: list[str]) -> None:
    """Outputs that two decoding paths could get wrong: one per prompt, all different, each
    more than one distinct token."""
    assert len(set(outputs)) == len(outputs), outputs
    for text in outputs:
        assert len(set(tok(text, add_special_tokens=False)["input_ids"])) > 1, outputs


def test_batched_left_padded_generation_matches_one_by_one(lively):
    model, tok = lively
    texts = [scoring.render(tok, [{"role": "user", "content": q}])
             for q in ["Hi", "What is 2 + 2? Think step by step please.", "Count: 1, 2, 3"]]
    batched = scoring.generate(model, tok, texts, max_new_tokens=8, batch_size=3)
    single = [scoring.generate(model, tok, [t], 8, 1)[0] for t in texts]
    _varied(tok, single)
    assert batched == single
    assert batched == scoring.generate(model, tok, texts, 8, 2)  # deterministic
    assert tok.padding_side == "right"  # restored


def test_reference_nll_matches_the_model_loss_on_answer_tokens(tiny):
    model, tok = tiny
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = scoring.render(tok, msgs)
    full = scoring.render(tok, msgs, "2 + 3 = 5\n#### 5")
    assert full.startswith(prompt)
    nll, counts = scoring.reference_nll(model, tok, [prompt, prompt], [full, full + "x"], 2)
    ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    labels = ids.clone()
    labels[:, :n_prompt] = -100
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss.item()
    assert counts[0] == ids.shape[1] - n_prompt
    assert nll[0] / counts[0] == pytest.approx(loss, rel=1e-4)
    assert counts[1] > counts[0]  # right padding of the shorter row is not counted


def test_evaluate_set_scores_and_compares(tiny, tiny_goldenset):
    model, tok = tiny
    gs = goldensets.load(tiny_goldenset)
    res = scoring.evaluate_set(model, tok, gs, batch_size=4)
    assert set(res.metrics) == {"numeric_accuracy", "answer_format", "perplexity"}
    assert len(res.examples) == 4 and math.isfinite(res.metrics["perplexity"])
    # a model that answers every question right: predictions are the references
    perfect = dict(res.columns, predictions=list(res.columns["references"]))
    fake_after = scoring.SetResult("math", dict(res.metrics, numeric_accuracy=1.0),
                                      [dict(e, numeric_accuracy=1.0) for e in res.examples],
                                      perfect, res.metric_args)
    cmp = compare({"math": res}, {"math": fake_after})
    m = cmp["math/numeric_accuracy"]
    assert m.delta == pytest.approx(1.0 - res.metrics["numeric_accuracy"])
    fixed_ids = tuple(i for i, e in enumerate(res.examples) if e["numeric_accuracy"] == 0)
    fixed = len(fixed_ids)
    assert (m.fixed, m.broken, m.fixed_ids, m.broken_ids) == (fixed, 0, fixed_ids, ())
    assert m.ci_low <= m.delta <= m.ci_high
    assert m.test == "McNemar (exact)"
    assert m.p_value == pytest.approx(0.5 ** (fixed - 1) if fixed else 1.0)
    assert cmp["math/perplexity"].delta == 0 and cmp["math/perplexity"].p_value == 1.0


def test_golden_set_manifest_errors(tmp_path):
    from harness.core.errors import HarnessError
    m = tmp_path / "g.yaml"
    m.write_text("name: g\nsource: g.jsonl\nmetrics: [numeric_acc]\n")
    with pytest.raises(HarnessError, match=r"g.yaml: metrics.0: unknown metric 'numeric_acc'; "
                                           "did you mean numeric_accuracy"):
        goldensets.load_manifest(str(m))
    m.write_text("name: g\nsource: g.jsonl\nmetrics: [exact_match]\nprompt: q\n")
    with pytest.raises(HarnessError, match="prompt: unknown key; did you mean prompt_field"):
        goldensets.load_manifest(str(m))


def test_every_shipped_golden_set_loads_and_fits_its_metrics():
    from conftest import ROOT
    shipped = sorted((ROOT / "goldensets").glob("*.yaml"))
    names = set()
    for path in shipped:
        if "shared" in path.name or path.name == "gsm8k.yaml":  # need ../shared or the Hub
            continue
        gs = goldensets.load(str(path))
        scoring.check_fit(gs.manifest, gs.path)
        names.add(gs.name)
        assert len(gs.prompts) >= 16 and all(p.strip() for p in gs.prompts)
    assert {"math", "math_preferences", "summarize", "qa", "classify", "rewrite",
            "general_knowledge"} <= names


def test_prompt_templates_and_labels(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "Great!", "label": "positive"}\n')
    m = tmp_path / "c.yaml"
    m.write_text("name: c\ntask: classification\nsource: c.jsonl\nreference_field: label\n"
                 "prompt_template: 'Sentiment? {text}'\nlabels: [positive, negative]\n"
                 "metrics: [accuracy, macro_f1]\n")
    gs = goldensets.load(str(m))
    assert gs.prompts == ["Sentiment? Great!"] and gs.references == ["positive"]
    assert goldensets.metric_args(gs.manifest, "macro_f1") == {"labels": ["positive",
                                                                          "negative"]}
    m.write_text("name: c\ntask: classification\nsource: c.jsonl\nreference_field: label\n"
                 "prompt_template: 'Sentiment? {body}'\nlabels: [positive]\nmetrics: [accuracy]\n")
    from harness.core.errors import HarnessError
    with pytest.raises(HarnessError, match="prompt_template: template needs field 'body'"):
        goldensets.load(str(m))


def test_metric_that_does_not_fit_the_task_is_named(tmp_path):
    from harness.core.errors import HarnessError
    (tmp_path / "p.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    m = tmp_path / "p.yaml"
    m.write_text("name: p\ntask: preference\nsource: p.jsonl\nprompt_field: prompt\n"
                 "metrics: [pairwise_accuracy, bleu]\n")
    with pytest.raises(HarnessError, match=r"p.yaml: metrics.1: metric 'bleu' does not fit a "
                                           "preference golden set"):
        scoring.check_fit(goldensets.load_manifest(str(m)), str(m))


def test_static_cache_path_gives_the_same_greedy_outputs(lively):
    model, tok = lively
    texts = [scoring.render(tok, [{"role": "user", "content": q}])
             for q in ["Hi", "What is 2 + 2? Think step by step please.", "Count: 1, 2, 3"]]
    dynamic = scoring.generate(model, tok, texts, 6, 2, static_cache=False)
    _varied(tok, dynamic)
    assert scoring.generate(model, tok, texts, 6, 2, static_cache=True) == dynamic


def test_one_pass_ends_each_row_at_its_own_cap_as_decoding_it_alone_would(lively):
    model, tok = lively
    texts = [scoring.render(tok, [{"role": "user", "content": q}])
             for q in ["Hi", "What is 2 + 2? Think step by step please.", "Count: 1, 2, 3",
                       "Name a colour."]]
    caps = [9, 3, 6, 1]
    alone = [scoring.generate(model, tok, [t], cap, 1)[0] for t, cap in zip(texts, caps)]
    _varied(tok, alone[:3])  # the last, of one token, is its prompt's alone
    for static in (False, True):
        assert scoring.generate(model, tok, texts, caps, 4, static_cache=static) == alone
    ids = [tok(scoring.generate(model, tok, [t], 9, 1)[0], add_special_tokens=False)
           ["input_ids"] for t in texts]
    assert any(len(x) > cap for x, cap in zip(ids, caps))  # the caps cut something


def test_every_generating_set_is_decoded_in_one_pass_and_scored_as_alone(lively, tmp_path,
                                                                          monkeypatch):
    """Two generating golden sets with different caps, and a preference set: the generating
    ones share one `generate` batch and one reference-NLL batch; each set's results are what
    scoring it alone gives."""
    from conftest import small_goldenset
    model, tok = lively
    math = goldensets.load(small_goldenset(
        tmp_path, "math.jsonl", "name: math\ntask: math\nmax_new_tokens: 7\n"
        "metrics: [numeric_accuracy, perplexity]\n", rows=3))
    gk = goldensets.load(small_goldenset(
        tmp_path, "general_knowledge.jsonl", "name: general_knowledge\ntask: generation\n"
        "prompt_template: 'Answer in one or two words. {question}'\nreference_field: answer\n"
        "metrics: [contains_answer, f1]\nmax_new_tokens: 3\n", rows=3))
    pref = goldensets.load(small_goldenset(
        tmp_path, "math_preferences.jsonl", "name: math_preferences\ntask: preference\n"
        "prompt_field: prompt\nmetrics: [pairwise_accuracy, score_margin]\n", rows=2))
    assert math.manifest.max_new_tokens != gk.manifest.max_new_tokens
    alone = {gs.name: scoring.evaluate_set(model, tok, gs, batch_size=8)
             for gs in (math, gk, pref)}
    _varied(tok, [e["prediction"] for gs in (math, gk) for e in alone[gs.name].examples])
    calls = []
    own = type(model).generate

    def counted(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return own(self, *args, **kwargs)
    monkeypatch.setattr(type(model), "generate", counted)
    together = scoring.evaluate_model(model, tok, [math, pref, gk], batch_size=8)
    assert calls == [6]  # math's 3 and general_knowledge's 3 in one batch
    assert list(together) == ["math", "math_preferences", "general_knowledge"]
    for name, res in together.items():
        assert [e.get("prediction") for e in res.examples] == \
            [e.get("prediction") for e in alone[name].examples]
        for key, value in res.metrics.items():
            assert value == pytest.approx(alone[name].metrics[key], rel=1e-5), (name, key)


def test_decoding_is_compiled_only_where_the_steps_win_the_compile_back():
    from conftest import ROOT
    gs = goldensets.load(str(ROOT / "goldensets" / "math.yaml"))  # 170 problems, 64 new tokens
    # 170 problems at batch 16: 11 batches of 64 new tokens
    assert scoring.decode_steps([gs], 16, None, "causal-lm") == 11 * 64
    assert scoring.decode_steps([gs], 256, 10, "causal-lm") == 10
    assert scoring.decode_steps([gs], 16, None, "seq-cls") == 0  # a reward model scores
    few, many = 7 * 80, scoring.COMPILE_BREAK_EVEN_STEPS
    assert not scoring.compiled_decoding("auto", "cuda", few)
    assert scoring.compiled_decoding("auto", "cuda", many)
    assert not scoring.compiled_decoding("auto", "cpu", many)
    assert scoring.compiled_decoding("compiled", "cuda", few)
    assert not scoring.compiled_decoding("eager", "cuda", many)
