import pytest

from harness import data, models, recipe, train


def build(recipe_dict, **over):
    r = recipe.build(recipe_dict, "test.yaml", over)
    plan = models.device_plan(r.model)
    return r, plan


def test_cpu_defaults_are_fp32_without_gradient_checkpointing(recipe_dict, tmp_path):
    r, plan = build(recipe_dict)
    assert (plan.device, plan.dtype, plan.bf16, plan.gradient_checkpointing) == (
        "cpu", "float32", False, False)
    cfg = train.build_config(r, plan, str(tmp_path))
    assert cfg.bf16 is False and cfg.gradient_checkpointing is False
    assert cfg.max_steps == 2 and cfg.seed == r.seed
    cfg = train.build_config(recipe.build(recipe_dict, "t", {"trainer.gradient_checkpointing":
                                                             True}), plan, str(tmp_path))
    assert cfg.gradient_checkpointing is True  # the user overrides what the harness picked


def _run(recipe_dict, tmp_path, **over):
    r, plan = build(recipe_dict, **over)
    tok = models.load_tokenizer(r.model)
    model = models.load_model(r.model, plan)
    tr, ev, _ = data.load_train(r.data, r.seed)
    return r, train.train(r, model, tok, tr, ev, plan, str(tmp_path / "out"))


def test_sft_with_lora_trains_only_the_adapter_and_masks_the_prompt(recipe_dict, tmp_path):
    r, res = _run(recipe_dict, tmp_path, **{"trainer.neftune_noise_alpha": 5.0})
    from peft import PeftModel
    assert isinstance(res.model, PeftModel)
    trainable = {n for n, p in res.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # all-linear: attention and MLP projections are wrapped
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{proj}.lora_A." in n for n in trainable), proj
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    assert len(losses) == 2 and all(x > 0 for x in losses)
    assert res.trainer.args.neftune_noise_alpha == 5.0
    # the loss falls on the answer only: the completion mask covers no prompt token
    batch = res.trainer.data_collator([res.trainer.train_dataset[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    tok = res.trainer.processing_class
    answer = tok.decode(ids[labels != -100])
    assert "\n#### " in answer and answer.rstrip().endswith("<|im_end|>")
    assert "<|im_start|>user" in tok.decode(ids[labels == -100])
    assert "<|im_start|>user" not in answer
    saved = train.save(res, str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert saved


def test_full_fine_tune_without_adapter(recipe_dict, tmp_path):
    _, res = _run(recipe_dict, tmp_path, **{"adapter.type": "none", "trainer.max_steps": 1})
    assert all(p.requires_grad for p in res.model.parameters())
    assert res.metrics["train_loss"] > 0


def test_eval_rows_give_eval_loss(recipe_dict, tmp_path):
    _, res = _run(recipe_dict, tmp_path, **{"data.eval_rows": 4, "trainer.max_steps": 1})
    assert res.metrics["eval_loss"] > 0


def test_invalid_trl_value_names_the_section(recipe_dict, tmp_path):
    from harness.errors import HarnessError
    r, plan = build(recipe_dict, **{"trainer.lr_scheduler_type": "bogus"})
    with pytest.raises(HarnessError, match="test.yaml: trainer: invalid TRL config"):
        train.build_config(r, plan, str(tmp_path))
