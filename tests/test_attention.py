import pytest
import torch

from harness import attention, models, recipe
from tests.test_train import _run


def test_varlen_attention_on_a_flat_row_equals_each_sequence_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    seqs = [torch.randint(0, 1000, (n,)) for n in (7, 12, 3)]
    with torch.no_grad():
        alone = [model(input_ids=s[None]).logits[0] for s in seqs]
        flat = torch.cat(seqs)[None]
        positions = torch.cat([torch.arange(len(s)) for s in seqs])[None]
        cu = torch.tensor([0, 7, 19, 22], dtype=torch.int32)
        with attention.training_attention(model, attention.NAME):
            assert model.config._attn_implementation == attention.NAME
            packed = model(input_ids=flat, position_ids=positions, cu_seq_lens_q=cu,
                           cu_seq_lens_k=cu, max_length_q=12, max_length_k=12).logits[0]
        assert model.config._attn_implementation == "sdpa"  # evaluation gets its own back
        # a dense causal pass over the flat row lets sequences see each other: the test can fail
        leaky = model(input_ids=flat).logits[0]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(leaky[7:19], alone[1], atol=1e-3)


def test_a_padded_batch_is_refused_rather_than_attended_wrongly(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with attention.training_attention(model, attention.NAME), pytest.raises(RuntimeError,
                                                                            match="padding-free"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long))


def test_packed_training_with_varlen_matches_transformers_packed_mask(recipe_dict, tmp_path,
                                                                     monkeypatch):
    """TRL packing (bfd, padding-free) trained through harness_varlen gives the losses of the same
    run through SDPA, where transformers builds the block-diagonal mask itself."""
    calls = []
    real = attention._segmented_sdpa
    monkeypatch.setattr(attention, "_segmented_sdpa", lambda *a: calls.append(a[3]) or real(*a))
    over = {"trainer.packing": True, "trainer.max_steps": 3, "adapter.dropout": 0.0}
    _, sdpa = _run(recipe_dict, tmp_path / "a", **over, **{"model.attn_implementation": "sdpa"})
    r, varlen = _run(recipe_dict, tmp_path / "b", **over,
                     **{"model.attn_implementation": attention.NAME})
    assert models.device_plan(r.model).attention == attention.NAME
    loss = lambda res: [h["loss"] for h in res.log_history if "loss" in h]  # noqa: E731
    assert len(loss(varlen)) == 3
    assert calls and all(len(cu) > 2 for cu in calls)  # several rows in each flat batch
    assert loss(varlen) == pytest.approx(loss(sdpa), rel=1e-4)
    # the trained model generates with padded batches afterwards: back to the loaded attention
    assert varlen.model.get_base_model().config._attn_implementation == "sdpa"


def test_gpu_plan_takes_the_fast_path_and_the_recipe_can_opt_out(monkeypatch, recipe_dict,
                                                                   tmp_path):
    import dataclasses

    from harness import train
    cpu = models.device_plan(recipe.ModelSpec())
    assert (cpu.packing, cpu.optim, cpu.attention, cpu.adapter_dtype) == (
        False, "adamw_torch", "sdpa", "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = models.device_plan(recipe.ModelSpec())
    assert (gpu.device, gpu.dtype, gpu.packing, gpu.optim, gpu.attention, gpu.adapter_dtype) == (
        "cuda", "bfloat16", True, "adamw_torch_fused", attention.NAME, "bfloat16")
    assert models.device_plan(recipe.ModelSpec(attn_implementation="sdpa")).attention == "sdpa"
    assert gpu.fused_norm and not cpu.fused_norm  # harness.kernels, on a GPU only
    assert (gpu.loader_workers, cpu.loader_workers) == (2, 0)  # collation beside the loop on a GPU
    assert not models.device_plan(recipe.ModelSpec(fused_norm=False)).fused_norm
    assert gpu.as_params()["device/packing"] is True  # shown in the run's params
    monkeypatch.undo()
    fast = dataclasses.replace(cpu, packing=True, optim="adamw_torch_fused")
    r = recipe.build(recipe_dict, "t.yaml")
    cfg = train.build_config(r, fast, str(tmp_path))
    assert (cfg.packing, cfg.optim) == (True, "adamw_torch_fused") and train.padding_free(cfg)
    assert cfg.dataloader_num_workers == 0
    r = recipe.build(recipe_dict, "t.yaml", {"trainer.packing": False, "trainer.optim": "adamw_torch"})
    cfg = train.build_config(r, fast, str(tmp_path))
    assert (cfg.packing, cfg.optim) == (False, "adamw_torch") and not train.padding_free(cfg)
    dpo = recipe.build({**recipe_dict, "method": "dpo"}, "t.yaml")
    assert not hasattr(train.build_config(dpo, fast, str(tmp_path)), "packing")

