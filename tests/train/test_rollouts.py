"""GRPO's rollouts decoded with the adapter merged (harness.train.rollouts), on the tiny model."""
import pytest

from harness import models
from harness.config import recipe
from harness.train import rollouts, trainers


def _lora(tiny_model_dir, dtype):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    # init_lora_weights=False: B is random too, so the adapter changes what the model says
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                           lora_dropout=0.0, init_lora_weights=False))


def _greedy(model, tok, n=6):
    import torch
    enc = tok(["What is 7 + 5?", "Name a colour."], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model.generate(**enc, max_new_tokens=n, do_sample=False, temperature=None,
                              top_p=None, top_k=None, pad_token_id=tok.pad_token_id).tolist()


def test_merged_rollouts_say_what_the_unmerged_adapter_says_and_leave_the_base_exact(
        tiny_model_dir):
    import torch
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    model = _lora(tiny_model_dir, torch.float32)
    unmerged = _greedy(model, tok)
    with rollouts.merged(model) as why:
        assert why is None
        assert _greedy(model, tok) == unmerged
        assert not any(getattr(m, "merged", False) for m in model.modules())
    assert "generate" not in model.__dict__  # the model's own generate again afterwards

    # bf16: merging and unmerging round; the kept copy puts every base weight back bit for bit
    half = _lora(tiny_model_dir, torch.bfloat16)
    before = {n: p.detach().clone() for n, p in half.named_parameters() if "base_layer" in n}
    drift = dict(before)
    with torch.no_grad():  # what peft's own merge and unmerge leave behind
        half.merge_adapter()
        half.unmerge_adapter()
    moved = [n for n, p in half.named_parameters() if n in drift and not torch.equal(p, drift[n])]
    assert moved  # the rounding this module undoes is real at this dtype
    with torch.no_grad():
        for n, p in half.named_parameters():
            if n in before:
                p.copy_(before[n])
    with rollouts.merged(half):
        for _ in range(3):
            _greedy(half, tok, n=2)
    assert all(torch.equal(p, before[n]) for n, p in half.named_parameters() if n in before)


def test_rollouts_decode_unmerged_where_merging_is_not_exact_or_there_is_nothing_to_merge(
        tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert rollouts.why_not(plain) == "no LoRA adapter"
    model = _lora(tiny_model_dir, torch.float32)
    model.is_loaded_in_4bit = True  # what transformers sets on a bitsandbytes model
    assert rollouts.why_not(model) == "quantized base weights"
    del model.is_loaded_in_4bit

    class Config:
        use_vllm = True
    assert rollouts.why_not(model, Config()) == "another generation engine"
    with rollouts.merged(model, Config()) as why:
        assert why == "another generation engine" and "generate" not in model.__dict__
    with rollouts.merged(model, enabled=False) as why:  # the device plan's merged_rollouts off
        assert why == "off" and "generate" not in model.__dict__


@pytest.mark.parametrize("merged", [True, False])
def test_a_grpo_run_decodes_its_rollouts_merged_and_trains_the_adapter_only(
        recipe_dict, tmp_path, monkeypatch, merged):
    import torch
    from peft.tuners.lora import Linear, LoraLayer

    import dataclasses

    from harness.data import trainset
    calls = []
    merge = Linear.merge

    def counted(self, *args, **kwargs):
        calls.append(1)
        return merge(self, *args, **kwargs)
    monkeypatch.setattr(Linear, "merge", counted)
    d = dict(recipe_dict, method="grpo", rewards=[{"name": "math_answer"}],
             trainer={"max_steps": 2, "per_device_train_batch_size": 2, "num_generations": 2,
                      "max_completion_length": 6})
    r = recipe.build(d, "g.yaml")
    # the device plan's merged_rollouts: on (the harness) and off (a benchmark's baseline)
    plan = dataclasses.replace(models.device_plan(r.model), merged_rollouts=merged)
    k = trainers.kind(r)
    tok = models.load_tokenizer(r.model)
    model = models.load_model(r.model, plan, task=k.task)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    tr, ev, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    res = trainers.train(r, model, tok, tr, ev, plan, str(tmp_path / "out"))
    assert res.trainer.state.global_step == 2
    layers = sum(isinstance(m, LoraLayer) for m in res.model.modules())
    # one merge of every LoRA layer per step's generation; none when off
    assert len(calls) == (2 * layers if merged else 0)
    base = res.model.get_base_model()
    for n, p in base.named_parameters():
        key = n.replace(".base_layer", "")
        if "lora_" not in n:
            assert torch.equal(p, frozen[key]), n  # the base comes out of training untouched
    assert "generate" not in res.model.__dict__


def test_compiled_rollouts_pad_prompts_for_a_static_cache_and_return_what_trl_expects(
        lively_model_dir):
    """TRL's call (its generation config turns compiling off); compiled rollouts decode it with a
    static cache (compiled on a GPU, run as it is on a CPU) and return the same tokens, in the
    shape TRL cuts its completions from. On the lively model, whose continuations differ from
    row to row and token to token, so a cache that mixed rows or positions would show."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig
    tok = AutoTokenizer.from_pretrained(lively_model_dir)
    tok.padding_side = "left"
    model = _lora(lively_model_dir, torch.float32)
    enc = tok(["What is 7 + 5?", "Name a colour, please."], return_tensors="pt", padding=True)
    config = GenerationConfig(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id,
                              disable_compile=True)
    with torch.no_grad():
        plain = model.generate(**enc, generation_config=config)
    new = plain[:, enc["input_ids"].shape[1]:]
    assert not torch.equal(new[0], new[1]) and len(set(new[0].tolist())) > 1  # not trivial
    seen = []
    own = model.base_model.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return own(*args, **kwargs)
    model.base_model.model.generate = spy
    with rollouts.merged(model, compiled=True), torch.no_grad():
        got = model.generate(**enc, generation_config=config)
    assert torch.equal(got, plain)
    asked = seen[0]
    assert asked["input_ids"].shape[1] % 64 == 0 and asked["input_ids"].shape[1] >= 64
    assert asked["generation_config"].cache_implementation == "static"
    assert asked["generation_config"].disable_compile is False
    assert config.disable_compile is True  # TRL's own config is left as it was


def test_rollouts_compile_where_eval_decoding_would_for_as_many_steps(recipe_dict, tmp_path):
    import dataclasses
    from harness.eval import scoring
    d = dict(recipe_dict, method="grpo", rewards=[{"name": "math_answer"}],
             trainer={"max_steps": 100, "per_device_train_batch_size": 4, "num_generations": 4,
                      "max_completion_length": 128})
    r = recipe.build(d, "g.yaml")
    cpu = models.device_plan(r.model)
    gpu = dataclasses.replace(cpu, device="cuda")
    config = trainers.build_config(r, gpu, str(tmp_path))
    assert 100 * 128 >= scoring.COMPILE_BREAK_EVEN_STEPS
    assert trainers.compiled_rollouts(r, config, gpu, 64) is True
    assert trainers.compiled_rollouts(r, config, cpu, 64) is False  # no CUDA graphs on a CPU
    short = recipe.with_values(r, {"trainer.max_steps": 4})
    assert trainers.compiled_rollouts(short, trainers.build_config(short, gpu, str(tmp_path)), gpu,
                                   64) is False  # 512 steps do not win a compile back
    eager = recipe.with_values(r, {"eval.decoding": "eager"})
    assert trainers.compiled_rollouts(eager, config, gpu, 64) is False
