import dataclasses
import math
from pathlib import Path

import pytest

from harness.data import trainset
from harness import models
from harness.config import recipe
from harness.train import trainers


def build(recipe_dict, **over):
    r = recipe.build(recipe_dict, "test.yaml", over)
    plan = models.device_plan(r.model)
    return r, plan


def test_cpu_defaults_are_fp32_without_gradient_checkpointing(recipe_dict, tmp_path):
    r, plan = build(recipe_dict)
    assert (plan.device, plan.dtype, plan.bf16, plan.gradient_checkpointing) == (
        "cpu", "float32", False, False)
    import warnings
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        cfg = trainers.build_config(r, plan, str(tmp_path))
    # the harness's own default uses the name this transformers knows, without a deprecation
    assert not [w for w in said if "checkpointing" in str(w.message)]
    assert cfg.bf16 is False and cfg.gradient_checkpointing is False
    assert cfg.max_steps == 2 and cfg.seed == r.seed
    import contextlib
    known = trainers.checkpointing_key(trainers.kind(r))
    for key in {"gradient_checkpointing", known}:  # a recipe may still use the old name
        said = pytest.warns(FutureWarning, match="deprecated") if key != known else \
            contextlib.nullcontext()
        with said:
            cfg = trainers.build_config(recipe.build(recipe_dict, "t", {f"trainer.{key}": True}),
                                     plan, str(tmp_path))
        assert cfg.gradient_checkpointing is True  # the user overrides what the harness picked


def _run(recipe_dict, tmp_path, plan_changes: dict | None = None, callbacks=None, **over):
    r, plan = build(recipe_dict, **over)
    plan = dataclasses.replace(plan, **(plan_changes or {}))
    k = trainers.kind(r)
    tok = models.load_tokenizer(r.model)
    model = models.load_model(r.model, plan, task=k.task)
    tr, ev, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    return r, trainers.train(r, model, tok, tr, ev, plan, str(tmp_path / "out"),
                             callbacks=callbacks)


# The tiny model is a random init (std 0.02) of 32 hidden units: its logits are near zero, so
# its per-token cross-entropy is near that of the uniform distribution over the vocabulary
def _uniform_loss(recipe_dict) -> float:
    from transformers import AutoConfig
    return math.log(AutoConfig.from_pretrained(recipe_dict["model"]["name"]).vocab_size)


def _embeds_with_noise(model) -> bool:
    """Whether the input embeddings, as the model is now, add noise to what they look up."""
    import torch
    emb = model.get_input_embeddings()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        return not torch.equal(emb(ids), emb.weight[ids])


@pytest.mark.fenced  # fused_lm_head
def test_sft_with_lora_trains_only_the_adapter_and_masks_the_prompt(recipe_dict, tmp_path):
    from transformers import TrainerCallback
    noisy = []

    class Embeddings(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            noisy.append(model.training and _embeds_with_noise(model))
    r, res = _run(recipe_dict, tmp_path, callbacks=[Embeddings()],
                  **{"trainer.neftune_noise_alpha": 5.0})
    from peft import PeftModel
    assert isinstance(res.model, PeftModel)
    trainable = {n for n, p in res.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # all-linear: attention and MLP projections are wrapped
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f".{proj}.lora_A." in n for n in trainable), proj
    losses = [h["loss"] for h in res.log_history if "loss" in h]
    assert len(losses) == 2 and losses[0] == pytest.approx(_uniform_loss(recipe_dict), abs=0.1)
    # NEFTune: noisy embeddings at every training step, the plain ones for scoring afterwards
    assert noisy == [True, True]
    res.model.train()
    assert not _embeds_with_noise(res.model)
    res.model.eval()
    # the loss falls on the answer only: the completion mask covers no prompt token
    batch = res.trainer.data_collator([res.trainer.train_dataset[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    tok = res.trainer.processing_class
    answer = tok.decode(ids[labels != -100])
    assert "\n#### " in answer and answer.rstrip().endswith("<|im_end|>")
    assert "<|im_start|>user" in tok.decode(ids[labels == -100])
    assert "<|im_start|>user" not in answer
    # scored as the base was: its own forward (not TRL's fused-LM-head wrapper), its KV cache
    base = res.model.get_base_model()
    assert "forward" not in base.__dict__ and base.config.use_cache is True
    saved = trainers.save(res, str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert saved


@pytest.mark.slow
def test_loader_workers_start_once_a_run_and_give_the_rows_of_workers_started_each_epoch(
        recipe_dict, tmp_path, monkeypatch):
    """With loader workers (a GPU plan's two) the harness keeps them across epochs
    (dataloader_persistent_workers): one start a run instead of one an epoch, the same batches."""
    from torch.utils.data import dataloader
    started = []
    own = dataloader._MultiProcessingDataLoaderIter.__init__

    def counting(self, loader):
        started.append(loader)
        own(self, loader)
    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", counting)
    trainer = {k: v for k, v in recipe_dict["trainer"].items() if k != "max_steps"}
    three_epochs = {**recipe_dict, "trainer": {**trainer, "num_train_epochs": 3},
                    "adapter": {**recipe_dict["adapter"], "dropout": 0.0}}
    losses = {}
    for keep in (None, False):  # the harness's default, then workers started every epoch
        over = {} if keep is None else {"trainer.dataloader_persistent_workers": keep}
        started.clear()
        _, res = _run(three_epochs, tmp_path / str(keep), {"loader_workers": 2}, **over)
        assert res.trainer.args.dataloader_num_workers == 2 and res.trainer.state.epoch == 3
        assert len(started) == (1 if keep is None else 3)
        losses[keep] = [h["loss"] for h in res.log_history if "loss" in h]
    assert len(losses[None]) == 6 and losses[None] == losses[False]
    # a recipe that asks for workers on a plan without any also keeps them
    cpu = recipe.build(recipe_dict, "t.yaml", {"trainer.dataloader_num_workers": 1})
    assert trainers.build_config(cpu, models.device_plan(cpu.model),
                              str(tmp_path)).dataloader_persistent_workers
    plain = recipe.build(recipe_dict, "t.yaml")  # no workers (a CPU plan's): Trainer's default
    assert not trainers.build_config(plain, models.device_plan(plain.model),
                                  str(tmp_path)).dataloader_persistent_workers


def test_full_fine_tune_without_adapter(recipe_dict, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    _, res = _run(recipe_dict, tmp_path, **{"adapter.type": "none", "trainer.max_steps": 1})
    assert all(p.requires_grad for p in res.model.parameters())
    assert res.metrics["train_loss"] == pytest.approx(_uniform_loss(recipe_dict), abs=0.1)
    # the one step moved every weight of the model, not an adapter's
    start = dict(AutoModelForCausalLM.from_pretrained(recipe_dict["model"]["name"])
                 .named_parameters())
    trained = dict(res.model.named_parameters())
    assert trained.keys() == start.keys()
    assert [n for n, p in trained.items() if torch.equal(p.detach(), start[n].detach())] == []


def test_eval_rows_give_eval_loss(recipe_dict, tmp_path):
    _, res = _run(recipe_dict, tmp_path, **{"data.eval_rows": 4, "trainer.max_steps": 1})
    assert res.metrics["eval_loss"] == pytest.approx(_uniform_loss(recipe_dict), abs=0.1)


def test_invalid_trl_value_names_the_section(recipe_dict, tmp_path):
    from harness.core.errors import HarnessError
    r, plan = build(recipe_dict, **{"trainer.lr_scheduler_type": "bogus"})
    with pytest.raises(HarnessError, match="test.yaml: trainer: invalid TRL config"):
        trainers.build_config(r, plan, str(tmp_path))


def _preference_recipe(recipe_dict, method, **over):
    d = dict(recipe_dict, method=method)
    d["data"] = {"train": "builtin:math_preferences", "builtin_rows": 8}
    d["trainer"] = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 128}
    return _run(d, Path(recipe_dict["output_dir"]), **over)


def _starts_at_the_reference(res) -> None:
    """DPO's first step: LoRA's B starts at zero, so the policy is its reference, every log
    ratio is 0 and TRL's sigmoid loss -log(sigmoid(beta * 0)) is ln 2 whatever beta is."""
    first = next(h for h in res.log_history if "loss" in h)
    assert res.trainer.loss_types == ["sigmoid"]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-3)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-3)


@pytest.mark.slow
def test_dpo_with_lora_uses_the_adapter_disabled_base_as_reference(recipe_dict):
    r, res = _preference_recipe(recipe_dict, "dpo", **{"data.eval_rows": 4})
    from peft import PeftModel
    assert isinstance(res.model, PeftModel)
    assert res.trainer.ref_model is None  # no second copy of the weights
    _starts_at_the_reference(res)
    assert "eval_rewards/margins" in res.metrics and "eval_rewards/accuracies" in res.metrics


@pytest.mark.slow
def test_dpo_with_precomputed_reference_log_probs(recipe_dict):
    _, res = _preference_recipe(recipe_dict, "dpo", **{"trainer.precompute_ref_log_probs": True})
    # the reference's log-probs ride with the rows, computed before the first step (from the
    # adapter-disabled base: the first step starts at the reference)
    ds = res.trainer.train_dataset
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(ds.column_names)
    ref = list(ds["ref_chosen_logps"]) + list(ds["ref_rejected_logps"])
    assert len(ref) == 2 * len(ds) and all(x < 0 for x in ref)  # a log-prob for every answer
    _starts_at_the_reference(res)


def test_reward_model_is_a_one_logit_classifier_with_lora(recipe_dict):
    import torch
    _, res = _preference_recipe(recipe_dict, "reward")
    base = res.model.get_base_model()
    assert type(base).__name__ == "LlamaForSequenceClassification"
    assert base.config.num_labels == 1 and res.model.peft_config["default"].task_type == "SEQ_CLS"
    # the new score head trains with the adapter (a random one would score the pairs)
    score = base.score
    assert not torch.equal(score.original_module.weight, score.modules_to_save["default"].weight)
    batch = res.trainer.data_collator([res.trainer.train_dataset[0]])
    with torch.no_grad():
        logits = res.model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (batch["input_ids"].shape[0], 1)  # one reward a sequence


def test_reward_recipe_rejects_causal_lm_options(recipe_dict):
    from harness.core.errors import HarnessError
    d = dict(recipe_dict, method="reward")
    d["trainer"] = {"neftune_noise_alpha": 5, "packing": True}
    with pytest.raises(HarnessError) as e:
        trainers.check_trainer_fields(recipe.build(d, "reward.yaml"))
    assert "trainer.neftune_noise_alpha: a causal-LM option" in str(e.value)
    assert "trainer.packing: an option of sft, not of reward (RewardConfig)" in str(e.value)


def test_qlora_is_rejected_on_a_cpu_up_front(recipe_dict):
    from harness.core.errors import HarnessError
    r = recipe.build(recipe_dict, "q.yaml", {"model.quantization": "4bit"})
    with pytest.raises(HarnessError, match="model.quantization: quantization '4bit' .* needs a CUDA"):
        models.device_plan(r.model)


def test_sft_data_in_a_dpo_recipe_names_the_key(recipe_dict, tmp_path):
    from harness.core.errors import HarnessError
    r = recipe.build(dict(recipe_dict, method="dpo"), "d.yaml")
    with pytest.raises(HarnessError, match="data.train: a preference trainer cannot train on "
                                           "question_answer rows"):
        trainset.load_train(r.data, r.seed, "preference")


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_the_best_checkpoint(recipe_dict, tmp_path):
    r, res = _run(recipe_dict, tmp_path, **{
        "data.builtin_rows": 16, "data.eval_rows": 4, "trainer.max_steps": 40,
        "trainer.learning_rate": 1e-12,  # the eval loss cannot improve: patience runs out
        "early_stopping": {"patience": 2, "eval_steps": 1}})
    state = res.trainer.state
    assert state.global_step == 3  # the first eval sets the best; two more without improvement
    assert state.best_model_checkpoint and state.best_model_checkpoint.endswith("checkpoint-1")
    assert res.trainer.args.load_best_model_at_end


def test_early_stopping_needs_eval_rows(recipe_dict):
    from harness.core.errors import HarnessError
    with pytest.raises(HarnessError, match="early_stopping needs held-out rows"):
        recipe.build(recipe_dict, "e.yaml", {"early_stopping": {"patience": 2}})


@pytest.mark.slow
def test_lora_weights_take_the_requested_dtype(recipe_dict, tmp_path):
    import torch
    _, res = _run(recipe_dict, tmp_path, **{"adapter.dtype": "bfloat16"})
    lora = [p for n, p in res.model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.bfloat16 for p in lora)
    assert [h["loss"] for h in res.log_history if "loss" in h]  # and it trains
    _, res = _run(recipe_dict, tmp_path / "auto")  # auto on a CPU: peft's fp32
    assert all(p.dtype == torch.float32 for n, p in res.model.named_parameters() if "lora_" in n)


def test_a_diverging_loss_stops_training_within_a_few_steps(recipe_dict, tmp_path):
    from harness.core.errors import TrainingFault
    with pytest.raises(TrainingFault, match=r"trainer.learning_rate: (loss|grad_norm) became "
                                            r"(nan|inf|-inf) "
                                            r"at step [1-5]: training diverged") as e:
        _run(recipe_dict, tmp_path, **{"trainer.learning_rate": 1e12, "trainer.max_steps": 40})
    assert e.value.exit_code == 1


def test_a_nan_gradient_stops_training_at_its_step_though_the_loss_is_finite(recipe_dict,
                                                                             tmp_path):
    """A NaN gradient with a finite loss (as a GRPO run on an H200 had): the run stops at that
    step with the one line, before NaN weights decode a rollout or score anything."""
    from transformers import TrainerCallback

    from harness.core.errors import TrainingFault

    class NanGradients(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            for p in model.parameters():
                if p.requires_grad:
                    p.register_hook(lambda g: g * float("nan"))
    r, plan = build(recipe_dict, **{"trainer.max_steps": 4})
    k = trainers.kind(r)
    model = models.load_model(r.model, plan, task=k.task)
    tr, _, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    seen = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))
    with pytest.raises(TrainingFault, match=r"trainer.learning_rate: grad_norm became nan at "
                                            r"step 1: training diverged; lower "
                                            r"trainer.learning_rate \(now [0-9.e-]+\)$"):
        trainers.train(r, model, models.load_tokenizer(r.model), tr, None, plan,
                    str(tmp_path / "out"), callbacks=[NanGradients(), Logs()])
    steps = [h for h in seen if "loss" in h]
    assert len(steps) == 1 and math.isfinite(steps[0]["loss"])  # stopped where it showed


def test_out_of_gpu_memory_says_what_to_change(recipe_dict, tmp_path):
    """The trainer's own out-of-memory exception (raised where a CUDA allocation would)."""
    import torch
    from transformers import TrainerCallback

    from harness.core.errors import TrainingFault

    class Allocate(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    r, plan = build(recipe_dict)
    k = trainers.kind(r)
    model = models.load_model(r.model, plan, task=k.task)
    tr, _, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    with pytest.raises(TrainingFault, match="out of GPU memory at step 1: lower "
                                            "trainer.per_device_train_batch_size"):
        trainers.train(r, model, models.load_tokenizer(r.model), tr, None, plan,
                    str(tmp_path / "out"), callbacks=[Allocate()])


def test_a_full_disk_ends_training_with_one_line(recipe_dict, tmp_path):
    """A real 16 KiB tmpfs as output_dir: the first checkpoint does not fit."""
    import subprocess

    from harness.core.errors import TrainingFault
    disk = tmp_path / "tiny-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        over = {"trainer.save_strategy": "steps", "trainer.save_steps": 1,
                "output_dir": str(disk)}
        r, plan = build(recipe_dict, **over)
        k = trainers.kind(r)
        model = models.load_model(r.model, plan, task=k.task)
        tr, _, _ = trainset.load_train(r.data, r.seed, k.data_kind)
        with pytest.raises(TrainingFault, match="output_dir: disk full writing"):
            trainers.train(r, model, models.load_tokenizer(r.model), tr, None, plan,
                        str(disk / "run"))
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.slow
@pytest.mark.fenced  # prepared_rows
def test_a_second_trainer_takes_the_rows_the_first_prepared_and_trains_the_same(recipe_dict,
                                                                                   tmp_path,
                                                                                   packing):
    r, plan = build(recipe_dict, **{"trainer.max_steps": 2, "trainer.packing": packing})
    tok = models.load_tokenizer(r.model)
    tr, ev, _ = trainset.load_train(r.data, r.seed, "supervised")

    def losses(rr, out, handover):
        res = trainers.train(rr, models.load_model(rr.model, plan), tok, tr, ev, plan,
                          str(tmp_path / out), handover=handover)
        return res, [h["loss"] for h in res.log_history if "loss" in h]

    sweep = trainers.Handover()  # what a sweep's Prepared holds for its trials
    first, _ = losses(r, "a", sweep)
    other = recipe.with_values(r, {"trainer.learning_rate": 1e-3, "adapter.r": 4})
    second, reused = losses(other, "b", sweep)  # a trial: other optimiser values, the same data
    assert second.trainer.train_dataset is first.trainer.train_dataset
    assert second.trainer.args.dataset_kwargs == {"skip_prepare_dataset": True}
    alone = trainers.Handover()
    fresh, own = losses(other, "c", alone)  # the same values, preparing its own rows
    assert fresh.trainer.train_dataset is not first.trainer.train_dataset
    assert reused == own and len(own) == 2  # exactly what the trainer computes on its own rows
    # a field that shapes the rows (max_length) makes the next trainer prepare its own
    shorter = recipe.with_values(r, {"trainer.max_length": 64})
    third, _ = losses(shorter, "d", alone)
    assert third.trainer.train_dataset is not fresh.trainer.train_dataset
    assert max(len(x) for x in third.trainer.train_dataset["input_ids"]) <= 64


def test_grpo_samples_one_group_a_step_on_cpu_and_four_on_a_gpu(tmp_path):
    """The GPU default holds four prompts' groups (its decoding costs the same per token
    whatever the batch); a recipe's own batch wins on either."""
    import dataclasses
    r = recipe.load("recipes/grpo_math.yaml")
    cpu = models.device_plan(r.model)
    gpu = dataclasses.replace(cpu, device="cuda")
    sizes = {p.device: trainers.build_config(r, p, str(tmp_path)).per_device_train_batch_size
             for p in (cpu, gpu)}
    assert sizes == {"cpu": 4, "cuda": 16}
    own = recipe.with_values(r, {"trainer.per_device_train_batch_size": 8})
    assert trainers.build_config(own, gpu, str(tmp_path)).per_device_train_batch_size == 8
    cfg = trainers.build_config(r, gpu, str(tmp_path))
    assert cfg.per_device_train_batch_size % cfg.num_generations == 0
