"""The memory plan (harness.accel.memory, models.fit_memory): estimates for published model
shapes, the choice it makes on a pretend GPU, the recipe's keys winning, and the one line."""
import dataclasses

import pytest
import torch

from harness import models
from harness.accel import memory
from harness.config import recipe
from harness.core.errors import HarnessError

GiB = memory.GiB


def _config(kind: str, hidden, layers, intermediate, heads, kv_heads, vocab, tied=False):
    """A transformers config of a published model's dimensions (no weights)."""
    from transformers import LlamaConfig, Qwen2Config
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    return cls(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
               num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
               tie_word_embeddings=tied)


CONFIGS = {  # published dimensions: (config, parameters the model card gives)
    "135M": (("llama", 576, 30, 1536, 9, 3, 49152, True), 134.5e6),  # SmolLM2-135M
    "1.7B": (("llama", 2048, 24, 8192, 32, 32, 49152, True), 1.71e9),  # SmolLM2-1.7B
    "7B": (("qwen2", 3584, 28, 18944, 28, 4, 152064), 7.61e9),  # Qwen2.5-7B
    "8B": (("llama", 4096, 32, 14336, 32, 8, 128256), 8.03e9),  # Llama-3-8B
}
# a user's recipe with no trainer keys on a GPU: 8 packed bins of max_length 1,024, LoRA r=16
# with dropout 0.05 on every linear layer, bf16
DEFAULTS = memory.Workload(batch=8, row_tokens=1024)
# bench/sweep_e2e.py: 16 bins of 1,024 set in its recipe, LoRA dropout 0
SWEEP_E2E = memory.Workload(batch=16, row_tokens=1024, lora_dropout=False)
H100 = 79 * GiB  # free on an 80 GB H100 (torch reports 79.2 GiB in all)


def _shape(size: str) -> memory.Shape:
    return memory.Shape.from_config(_config(*CONFIGS[size][0]))


@pytest.mark.parametrize("size", CONFIGS)
def test_parameters_come_from_the_published_dimensions(size):
    assert _shape(size).params == pytest.approx(CONFIGS[size][1], rel=0.01)


def test_the_calibration_step_matches_its_measured_peak():
    """135M, 16 packed bins of 1,024, LoRA r=16 without dropout, bf16 (docs/benchmarks.md):
    peak allocated 9.91 GiB; with CUDA graphs 18.9 GiB reserved."""
    e = memory.estimate(_shape("135M"), SWEEP_E2E, checkpointing=False, micro_batch=16,
                        graphs=True)
    assert (e.total - e.graph_pool - e.overhead) / GiB == pytest.approx(9.91, rel=0.05)
    assert 18.9 * GiB <= e.total <= 18.9 * GiB * 1.1  # conservative by at most a tenth


def test_checkpointing_and_micro_batches_shrink_the_activations():
    shape = _shape("7B")
    full = memory.estimate(shape, DEFAULTS, False, 8, False)
    ckpt = memory.estimate(shape, DEFAULTS, True, 8, False)
    micro = memory.estimate(shape, DEFAULTS, True, 2, False)
    assert full.activations > 5 * ckpt.activations > 5 * micro.activations
    assert full.static == ckpt.static == micro.static  # weights, adapter, optimizer
    # 4-bit weights: about a quarter of the bf16 linear weights, the embeddings as they were
    q = memory.estimate(shape, dataclasses.replace(DEFAULTS, quantized=True), True, 8, False)
    assert 0.25 < q.weights / full.weights < 0.4
    # a trainer without TRL's fused LM head holds the logits: T x vocab x 10 bytes
    unfused = memory.estimate(shape, dataclasses.replace(DEFAULTS, fused_head=False), True, 8,
                              False)
    assert unfused.head - ckpt.head > 8 * 1024 * 152064 * 9


@pytest.mark.parametrize("size", ["135M", "1.7B"])
def test_small_models_keep_the_fast_path_on_an_h100(size):
    c = memory.choose(_shape(size), DEFAULTS, H100)
    assert (c.fits, c.checkpointing, c.micro_batch, c.accumulation, c.graphs) == (
        True, False, 8, 1, True)


@pytest.mark.parametrize("size", ["7B", "8B"])
@pytest.mark.parametrize("work", [DEFAULTS, SWEEP_E2E], ids=["defaults", "sweep_e2e"])
def test_7b_and_8b_lora_turn_checkpointing_on_an_h100(size, work):
    """bench/sweep_e2e.py's 7B trial ran out of memory at step 0 without checkpointing."""
    pinned = memory.Pinned(batch=work is SWEEP_E2E)
    assert memory.estimate(_shape(size), work, False, work.batch, False).total > H100
    c = memory.choose(_shape(size), work, H100, pinned)
    assert (c.fits, c.checkpointing, c.graphs, c.micro_batch, c.accumulation) == (
        True, True, False, work.batch, 1)
    assert c.estimate.total <= H100 * memory.MARGIN
    assert c.line().startswith(f"memory plan: {size[:-1]}.") and "with gradient checkpointing" \
        in c.line() and "CUDA graphs off" in c.line()


def test_8b_on_a_24gib_card_micro_batches_refuses_full_tuning_and_fits_in_4_bits():
    shape, card = _shape("8B"), 24 * GiB
    lora = memory.choose(shape, DEFAULTS, card)
    assert lora.fits and lora.checkpointing and lora.accumulation > 1
    assert lora.micro_batch * lora.accumulation == DEFAULTS.batch  # the same effective batch
    assert f"micro-batch {lora.micro_batch} x {lora.accumulation} accumulation" in lora.line()
    full = memory.choose(shape, dataclasses.replace(DEFAULTS, lora_r=0), card)
    assert not full.fits
    line = memory.refusal(full)
    assert "\n" not in line and "model.quantization: 4bit with adapter.type: lora" in line
    qlora = memory.choose(shape, dataclasses.replace(
        DEFAULTS, quantized=True, graphs_blocked="model.quantization"), card)
    assert qlora.fits and qlora.accumulation == 1 and not qlora.graphs
    assert "4-bit" in qlora.line() and "no CUDA graphs (model.quantization)" in qlora.line()
    # and a 4-bit model that still does not fit names no quantization it already has
    tiny_card = memory.choose(shape, dataclasses.replace(DEFAULTS, quantized=True), 4 * GiB)
    assert not tiny_card.fits and "model.quantization" not in memory.refusal(tiny_card)


def test_the_recipes_keys_win():
    seven, small = _shape("7B"), _shape("135M")
    # checkpointing off in the recipe: the plan micro-batches instead
    c = memory.choose(seven, DEFAULTS, H100, memory.Pinned(checkpointing=False))
    assert not c.checkpointing and c.accumulation > 1 and c.fits
    # ... and with the batch set too: kept, with a warning
    c = memory.choose(seven, DEFAULTS, H100, memory.Pinned(checkpointing=False, batch=True))
    assert (c.checkpointing, c.accumulation, c.fits) == (False, 1, True)
    assert "trainer.gradient_checkpointing, trainer.per_device_train_batch_size" in c.why_not
    # checkpointing asked for on a model that needs none: on, and graphs (which cannot replay
    # it) off
    c = memory.choose(small, DEFAULTS, H100, memory.Pinned(checkpointing=True))
    assert c.checkpointing and not c.graphs
    assert not memory.choose(small, DEFAULTS, H100, memory.Pinned(graphs=False)).graphs
    # graphs asked for where they do not fit: kept (the trainer refuses what they cannot replay)
    c = memory.choose(seven, DEFAULTS, H100, memory.Pinned(graphs=True))
    assert c.graphs and not c.checkpointing and "model.cuda_graphs" in c.why_not


def test_batch_keys_apply_only_where_the_recipe_sets_no_batch():
    assert memory.batch_keys(2, 4, {}) == {"per_device_train_batch_size": 2,
                                           "gradient_accumulation_steps": 4}
    assert memory.batch_keys(2, 4, {"per_device_train_batch_size": 8}) == {}
    assert memory.batch_keys(2, 4, {"gradient_accumulation_steps": 1}) == {}
    assert memory.batch_keys(0, 1, {}) == {}


def _gpu(monkeypatch):
    """A pretend GPU: the plan and the TRL config as on one (TrainingArguments picks cuda:0)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)


def _folder(tmp_path, size: str) -> str:
    """A model folder holding only the config of `size`'s published dimensions."""
    _config(*CONFIGS[size][0]).save_pretrained(tmp_path / size)
    return str(tmp_path / size)


def test_the_device_plan_takes_the_choice_and_says_it(monkeypatch, tmp_path, capfd):
    _gpu(monkeypatch)
    spec = recipe.ModelSpec(name=_folder(tmp_path, "7B"))
    plan = models.device_plan(spec)
    assert plan.cuda_graphs and not plan.gradient_checkpointing  # the defaults before
    fitted = models.fit_memory(plan, spec, spec.name, DEFAULTS, memory.Pinned(), free=H100)
    assert fitted.gradient_checkpointing and not fitted.cuda_graphs
    assert (fitted.micro_batch, fitted.accumulation) == (0, 1)  # the batch as configured
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("[harness] memory plan: 7.6B params, bf16, est. ")
    params = fitted.as_params()
    assert params["device/memory_free_gib"] == 79.0
    assert 14 < params["device/memory_est_gib"] < 79 * memory.MARGIN
    # on a 24 GiB card: micro-batches the trainer's config takes, unless the recipe sets a batch
    small = models.fit_memory(plan, spec, spec.name, DEFAULTS, memory.Pinned(), free=24 * GiB)
    assert small.accumulation > 1 and small.micro_batch * small.accumulation == 8


def test_a_plan_built_for_micro_batches_sets_the_trl_config(monkeypatch, recipe_dict, tmp_path):
    from harness.train import trainers
    r = recipe.build(recipe_dict, "t.yaml")
    base = models.device_plan(r.model)
    plan = dataclasses.replace(base, micro_batch=2, accumulation=4)
    unset = recipe.build({**recipe_dict, "trainer": {"max_steps": 2}}, "t.yaml")
    config = trainers.build_config(unset, plan, str(tmp_path))
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (2, 4)
    config = trainers.build_config(r, plan, str(tmp_path))  # the recipe sets batch 4: kept
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (4, 1)


def test_a_model_that_cannot_fit_stops_before_loading_in_one_line(monkeypatch, recipe_dict,
                                                                     tmp_path):
    """Full fine-tuning of Llama-3-8B's shape on a 24 GiB card: the folder holds no weights,
    so getting to the error at all shows nothing was loaded."""
    from harness.pipeline import prepared
    _gpu(monkeypatch)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (24 * GiB, 24 * GiB))
    r = recipe.build({**recipe_dict, "model": {"name": _folder(tmp_path, "8B")},
                      "adapter": {"type": "none"}}, "t.yaml")
    with pytest.raises(HarnessError) as e:
        prepared.prepare(r)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert "model.quantization: 4bit with adapter.type: lora" in str(e.value)
    assert str(e.value).startswith("t.yaml: model.quantization: 8.0B params: full fine-tuning")


def test_the_workload_is_read_from_the_trainers_config(monkeypatch, recipe_dict):
    from harness.pipeline import prepared
    from harness.train import trainers
    # the name the installed transformers knows (activation_checkpointing since 5.2x)
    checkpointing = trainers.checkpointing_key(trainers.TRAINERS.get("dpo"))
    _gpu(monkeypatch)
    bare = {**recipe_dict, "trainer": {"max_steps": 2}}
    work, pinned = prepared.memory_workload(recipe.build(bare, "t.yaml"),
                                            models.device_plan(recipe.ModelSpec()))
    # the harness's batch of 8 and TRL's max_length of 1,024; nothing pinned
    assert (work.batch, work.row_tokens, work.lora_r, work.lora_dropout) == (8, 1024, 4, True)
    assert pinned == memory.Pinned()
    dpo = recipe.build({**bare, "method": "dpo", "data": {"train": "builtin:math_preferences"},
                        "trainer": {"per_device_train_batch_size": 2, "max_length": 256,
                                    checkpointing: False}}, "t.yaml")
    work, pinned = prepared.memory_workload(dpo, models.device_plan(recipe.ModelSpec()))
    assert (work.batch, work.row_tokens) == (2, 512)  # chosen and rejected, each 256
    assert pinned == memory.Pinned(checkpointing=False, batch=True)


def test_the_cpu_plan_is_unchanged(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = recipe.ModelSpec(name=_folder(tmp_path, "8B"))
    cpu = models.device_plan(spec)
    assert models.fit_memory(cpu, spec, spec.name, DEFAULTS, memory.Pinned(), free=1) is cpu
    assert (cpu.gradient_checkpointing, cpu.micro_batch, cpu.accumulation) == (False, 0, 1)


def test_a_model_of_another_shape_keeps_the_defaults(monkeypatch, tmp_path, capfd):
    """GPT-2's config names no intermediate size: nothing is estimated, nothing changes."""
    from transformers import GPT2Config
    _gpu(monkeypatch)
    GPT2Config(n_embd=64, n_layer=2, n_head=4).save_pretrained(tmp_path / "gpt2")
    spec = recipe.ModelSpec(name=str(tmp_path / "gpt2"))
    plan = models.device_plan(spec)
    assert models.fit_memory(plan, spec, spec.name, DEFAULTS, memory.Pinned(), free=H100) is plan
    assert "[harness] memory plan: not estimated (" in capfd.readouterr().err
