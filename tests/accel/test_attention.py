import pytest
import torch

from harness.accel import attention
from harness import models
from harness.config import recipe
from tests.train.test_trainers import _run


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


def test_running_out_of_memory_in_the_kernel_is_not_taken_for_a_refusal_of_grouped_heads(
        monkeypatch):
    import torch.nn.attention.varlen as varlen

    def kernel(q, k, *a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory") if k.shape[1] < q.shape[1] else \
            AssertionError("the K/V copy must not be tried after an out-of-memory error")
    monkeypatch.setattr(varlen, "varlen_attn", kernel)
    learned = attention.VarlenKernel()
    q, k = torch.zeros(8, 9, 4), torch.zeros(8, 3, 4)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(torch.OutOfMemoryError):
        attention._cuda_varlen(q, k, k, cu, 8, 0.5, learned)
    assert learned.grouped_kv is None  # the next call tries the grouped heads again


def test_training_hands_its_kernel_on_and_scoring_mid_training_gets_the_models_own(
        recipe_dict, tmp_path, monkeypatch):
    """What the varlen kernel was found to take goes from one trainer to the next through the
    Handover (a sweep's trials), unless the plan's grouped_kv is off; inside training, scoring
    (a pruner's slice) attends with the model's own attention and training's comes back."""
    import dataclasses

    from transformers import TrainerCallback

    from harness.data import trainset
    from harness.train import trainers
    kernels, during = [], []
    real = attention.training_attention

    def spy(model, name, kernel=None):
        kernels.append(kernel)
        return real(model, name, kernel)
    monkeypatch.setattr(attention, "training_attention", spy)

    class Scores(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            base = model.get_base_model()
            with attention.own_attention(base):
                during.append(base.config._attn_implementation)
            during.append(base.config._attn_implementation)
    r = recipe.build(recipe_dict, "t.yaml", {"trainer.packing": True, "trainer.max_steps": 1,
                                             "model.attn_implementation": attention.NAME})
    plan = models.device_plan(r.model)
    tok = models.load_tokenizer(r.model)
    tr, _, _ = trainset.load_train(r.data, r.seed, "supervised")
    handover = trainers.Handover()
    for i, p in enumerate((plan, dataclasses.replace(plan, grouped_kv=False))):
        trainers.train(r, models.load_model(r.model, p), tok, tr, None, p,
                       str(tmp_path / str(i)), callbacks=[Scores()], handover=handover)
    assert kernels[0] is handover.varlen
    assert kernels[1] is not handover.varlen and kernels[1].grouped_kv is False
    assert during == ["sdpa", attention.NAME] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernel needs a CUDA GPU")
@pytest.mark.parametrize("grouped", [None, False])  # None: the kernel groups heads if it can
def test_cuda_varlen_with_fewer_kv_heads_matches_attention_per_sequence(grouped):
    learned = attention.VarlenKernel(grouped)  # False: the device plan's grouped_kv off
    torch.manual_seed(0)
    lens = [300, 700, 24]
    cu = torch.tensor([0, 300, 1000, 1024], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(1024, h, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for h in (9, 3, 3))
    out = attention._cuda_varlen(q, k, v, cu, max(lens), 0.125, learned)
    out.float().square().sum().backward()
    assert learned.grouped_kv is not None if grouped is None else learned.grouped_kv is False
    ref_in = [t.detach().float().transpose(0, 1).requires_grad_() for t in (q, k, v)]
    ref = attention._segmented_sdpa(*ref_in, cu.cpu(), 0.125).transpose(0, 1)  # fp32, SDPA's GQA
    ref.square().sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    for got, want in zip((q, k, v), ref_in):
        assert got.grad.shape == got.shape
        want = want.grad.transpose(0, 1)
        torch.testing.assert_close(got.grad.float(), want, rtol=2e-2,
                                   atol=2e-2 * want.abs().max().item())


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="the CPU's segmented SDPA; a GPU's varlen kernel is tested above")
@pytest.mark.slow
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


@pytest.mark.slow
def test_packed_batches_padded_to_max_length_train_to_the_same_losses(recipe_dict, tmp_path):
    """The GPU plan pads each flat row to a multiple of max_length (one shape a step): the
    padding is attended alone and carries no label, so the losses are the unpadded run's."""
    over = {"trainer.packing": True, "trainer.max_steps": 3, "adapter.dropout": 0.0,
            "model.attn_implementation": attention.NAME}
    # unpadded even where the plan would pad (a GPU)
    _, plain = _run(recipe_dict, tmp_path / "a", **over, **{"trainer.pad_to_multiple_of": None})
    _, padded = _run(recipe_dict, tmp_path / "b", **over, **{"trainer.pad_to_multiple_of": 128})
    rows = [padded.trainer.train_dataset[i] for i in range(4)]
    batch, unpadded = padded.trainer.data_collator(rows), plain.trainer.data_collator(rows)
    assert batch["input_ids"].shape[1] % 128 == 0
    assert batch["input_ids"].shape[1] > unpadded["input_ids"].shape[1]  # the test can fail
    assert (batch["labels"] != -100).sum() == (unpadded["labels"] != -100).sum()
    loss = lambda res: [h["loss"] for h in res.log_history if "loss" in h]  # noqa: E731
    assert len(loss(padded)) == 3 and loss(padded) == pytest.approx(loss(plain), rel=1e-4)


@pytest.mark.fenced  # padding_free_rule
def test_gpu_plan_takes_the_fast_path_and_the_recipe_can_opt_out(monkeypatch, recipe_dict,
                                                                   tmp_path):
    import dataclasses

    from harness.train import trainers
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU, also on a GPU host
    cpu = models.device_plan(recipe.ModelSpec())
    assert (cpu.packing, cpu.optim, cpu.attention, cpu.adapter_dtype) == (
        False, "adamw_torch", "sdpa", "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = models.device_plan(recipe.ModelSpec())
    assert (gpu.device, gpu.dtype, gpu.packing, gpu.optim, gpu.attention, gpu.adapter_dtype) == (
        "cuda", "bfloat16", True, "adamw_torch_fused", attention.NAME, "bfloat16")
    assert models.device_plan(recipe.ModelSpec(attn_implementation="sdpa")).attention == "sdpa"
    assert gpu.fused_norm and not cpu.fused_norm  # harness.accel.kernels, on a GPU only
    assert (gpu.loader_workers, cpu.loader_workers) == (2, 0)  # collation beside the loop on a GPU
    assert not models.device_plan(recipe.ModelSpec(fused_norm=False)).fused_norm
    assert gpu.as_params()["device/packing"] is True  # shown in the run's params
    # the benchmark switches: every fast path on, and no run's params list them
    assert all(getattr(p, s) for p in (cpu, gpu) for s in models.DevicePlan.SWITCHES)
    assert not {f"device/{s}" for s in models.DevicePlan.SWITCHES} & set(gpu.as_params())
    assert (gpu.pad_packed, gpu.expandable_segments) == (True, True)
    assert (cpu.pad_packed, cpu.expandable_segments) == (False, False)
    # PyTorch's own environment variable, when the user sets it, wins
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False")
    assert not models.device_plan(recipe.ModelSpec()).expandable_segments
    monkeypatch.undo()
    fast = dataclasses.replace(cpu, packing=True, optim="adamw_torch_fused")
    r = recipe.build(recipe_dict, "t.yaml")
    cfg = trainers.build_config(r, fast, str(tmp_path))
    assert (cfg.packing, cfg.optim) == (True, "adamw_torch_fused") and trainers.padding_free(cfg)
    assert cfg.dataloader_num_workers == 0 and cfg.pad_to_multiple_of is None
    padded = dataclasses.replace(fast, pad_packed=True)
    cfg = trainers.build_config(r, padded, str(tmp_path))
    assert cfg.pad_to_multiple_of == cfg.max_length == r.trainer["max_length"]
    mine = recipe.build(recipe_dict, "t.yaml", {"trainer.pad_to_multiple_of": 8})
    assert trainers.build_config(mine, padded, str(tmp_path)).pad_to_multiple_of == 8
    r = recipe.build(recipe_dict, "t.yaml", {"trainer.packing": False, "trainer.optim": "adamw_torch"})
    cfg = trainers.build_config(r, fast, str(tmp_path))
    assert (cfg.packing, cfg.optim) == (False, "adamw_torch") and not trainers.padding_free(cfg)
    assert trainers.build_config(r, padded, str(tmp_path)).pad_to_multiple_of is None  # no bins
    dpo = recipe.build({**recipe_dict, "method": "dpo"}, "t.yaml")
    assert not hasattr(trainers.build_config(dpo, fast, str(tmp_path)), "packing")



@pytest.mark.fenced  # allocator_settings
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA allocator needs a GPU")
def test_gpu_plan_loads_the_model_into_segments_that_grow_in_place(tiny_model_dir):
    spec = recipe.ModelSpec(name=tiny_model_dir)
    plan = models.device_plan(spec)
    assert plan.expandable_segments  # PYTORCH_CUDA_ALLOC_CONF unset here
    torch.cuda.empty_cache()  # no cached segment of earlier tests for the model to land in
    try:
        model = models.load_model(spec, plan)
        segments = torch.cuda.memory._snapshot()["segments"]
        assert any(s["is_expandable"] and s["allocated_size"] for s in segments)
        assert next(model.parameters()).is_cuda
    finally:
        torch._C._accelerator_setAllocatorSettings("expandable_segments:False")


@pytest.mark.parametrize("chosen", [None, "sdpa"])
def test_grpo_trains_without_the_fused_masked_kernels_unless_the_recipe_names_sdpa(
        recipe_dict, tmp_path, chosen):
    from transformers import TrainerCallback

    from harness.data import trainset
    from harness.train import trainers
    def kernels():  # which SDPA kernels torch may pick now
        return {"efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled()}
    seen = []

    class Seen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(kernels())
    before = kernels()
    d = dict(recipe_dict, method="grpo", rewards=[{"name": "math_answer"}],
             trainer={"max_steps": 2, "per_device_train_batch_size": 2, "num_generations": 2,
                      "max_completion_length": 6})
    d["model"] = dict(d["model"], attn_implementation=chosen)
    r = recipe.build(d, "g.yaml")
    plan = models.device_plan(r.model)
    k = trainers.kind(r)
    model = models.load_model(r.model, plan, task=k.task)
    tr, ev, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    res = trainers.train(r, model, models.load_tokenizer(r.model), tr, ev, plan,
                      str(tmp_path / "out"), callbacks=[Seen()])
    assert res.trainer.state.global_step == 2 and len(seen) == 2
    fused_off = {"efficient": False, "cudnn": False, "math": True}
    assert all(s == (before if chosen else fused_off) for s in seen)
    assert kernels() == before  # torch's choice again once training is over
