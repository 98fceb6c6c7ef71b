import dataclasses
import itertools

import pytest
import torch

from harness.accel import attention, graphs
from harness import models
from harness.config import recipe
from harness.train import trainers
from harness.core.errors import HarnessError
from tests.train.test_trainers import _run

CHECKPOINTING = trainers.checkpointing_key(trainers.TRAINERS.get("sft"))
PACKED = {"trainer.packing": True, "adapter.dropout": 0.0, "trainer.pad_to_multiple_of": 128,
          "model.attn_implementation": attention.NAME}


@pytest.fixture(autouse=True)
def fresh_process():
    """Each test starts as a new process would: no batch shape run before (graphs.WARM)."""
    graphs.WARM.clear()
    yield
    graphs.WARM.clear()


def _lora(model_dir, r: int, dropout: float = 0.0, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=r, target_modules="all-linear",
                                             lora_dropout=dropout, init_lora_weights=False))
    model.train()
    return model


def _packed_batch(lengths=(40, 60, 28), slots: int = 4) -> dict:
    """Sequences of `lengths` in one row, their bounds padded with empty sequences to `slots`,
    as StaticSequences hands them over."""
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    cu = torch.cat([cu, cu[-1:].expand(slots - len(lengths))]).cuda()
    return {"input_ids": torch.randint(0, 1000, (1, sum(lengths)), device="cuda"),
            "position_ids": torch.cat([torch.arange(n) for n in lengths])[None].cuda(),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 64, "max_length_k": 64,
            "use_cache": False}  # as TRL trains


def _steps(model, batches: list[dict]):
    """A training step's forward and backward a batch, through the graphed backbone: the
    GraphedBackbone, the number of shapes it captured, each step's hidden states and trainable
    gradients."""
    base = model.get_base_model()
    outs, grads = [], []
    with attention.training_attention(base, attention.NAME), \
            graphs.cuda_graphs(base, True) as graphed:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            hidden = base.model(**batch).last_hidden_state
            hidden.float().square().mean().backward()
            outs.append(hidden.detach().clone())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad})
            # as in a training loop: a step's autograd graph is gone before the next step (one
            # kept alive pins the eager step's gradient nodes to its stream, and capture fails)
            del hidden
        shapes = len(graphed.graphs)  # dropped on leaving
    assert "forward" not in vars(base.model)
    return graphed, shapes, outs, grads


def test_static_sequences_give_every_batch_one_shape_and_the_same_loss(recipe_dict, tmp_path):
    _, res = _run(recipe_dict, tmp_path, **PACKED, **{"trainer.max_steps": 1})
    rows = [res.trainer.train_dataset[i] for i in range(3)]
    trl = res.trainer.data_collator  # on a GPU the harness has wrapped it already
    trl = trl.collator if isinstance(trl, graphs.StaticSequences) else trl
    static = graphs.StaticSequences(trl, max_length=128, multiple=16)
    plain, batch = trl(rows), static(rows)
    real = sum(len(x["input_ids"]) for x in rows)
    total = batch["input_ids"].shape[1]
    assert total % 128 == 0 and total > real  # padded: the test can fail
    # TRL makes each padding token a sequence; here the padding is one, then empty ones follow
    assert plain["cu_seq_lens_q"].numel() - 1 > total - real
    cu = batch["cu_seq_lens_q"]
    assert (cu.numel() - 1) % 16 == 0 and cu[-1] == total and (cu.diff() >= 0).all()
    assert cu.diff().count_nonzero() == plain["cu_seq_lens_q"].diff().count_nonzero() - (
        total - real) + 1
    assert batch["position_ids"][0, real:].tolist() == list(range(total - real))
    assert batch["max_length_q"] == 128 and batch["labels"].equal(plain["labels"])
    assert static.pad_token_id == trl.pad_token_id
    # bins that hold fewer tokens than they could: padded on to max_length each, in sequences of
    # max_length at most, so that the batch has the shape of a batch of full bins
    length = total // (len(rows) - 1)  # bins a third short: half a batch of padding to add
    full = graphs.StaticSequences(trl, max_length=length, multiple=16)(rows)
    assert full["input_ids"].shape == full["labels"].shape == (1, len(rows) * length)
    assert full["labels"][0, total:].eq(-100).all() and full["labels"][:, :total].equal(
        plain["labels"])
    bounds = full["cu_seq_lens_q"]
    pads = bounds[(bounds > real) & (bounds < len(rows) * length)].tolist()
    assert pads == [real + length]  # the padding: two sequences, neither over max_length
    assert full["position_ids"][0, real:].tolist() == [
        i % length for i in range(len(rows) * length - real)]
    # more than a bin short: rows, not bins (evaluation unpacked); padded to no bin's length
    rows_alone = graphs.StaticSequences(trl, max_length=10 * total, multiple=16)(rows)
    assert rows_alone["input_ids"].shape == (1, total)
    model = res.model.eval()
    on = lambda b: {k: v.to(model.device) if torch.is_tensor(v) else v  # noqa: E731
                    for k, v in b.items()}
    with torch.no_grad(), attention.training_attention(model.get_base_model(), attention.NAME):
        want = model(**on(plain)).loss
        got = model(**on(batch)).loss
        longer = model(**on(full)).loss
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(longer, want)


def _gpu_plan(cpu_plan):
    return dataclasses.replace(cpu_plan, cuda_graphs=True, pad_packed=True, packing=True)


@pytest.mark.parametrize("over,why", [
    ({}, None),
    ({"trainer.gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
    ({"trainer.neftune_noise_alpha": 5.0}, "neftune"),
    # the name the installed transformers knows (the GPU image's is older)
    ({f"trainer.{CHECKPOINTING}": True}, CHECKPOINTING),
    ({"trainer.dataloader_pin_memory": True}, "dataloader_pin_memory"),
    ({"trainer.pad_to_multiple_of": None}, "pad_to_multiple_of is unset"),
    ({"trainer.packing": False}, "not padding-free packed"),
])
def test_graphs_are_kept_off_where_a_replayed_step_would_be_wrong(recipe_dict, tmp_path, over,
                                                                   why):
    r = recipe.build(recipe_dict, "t.yaml", {"trainer.packing": True, **over})
    plan = _gpu_plan(models.device_plan(r.model))
    config = trainers.build_config(r, plan, str(tmp_path))
    got = trainers.graph_blocker(r, config, plan)
    assert got is None if why is None else why in got
    # the plan's default gives way (above); a recipe that asks for graphs is told why not
    if why:
        asked = recipe.build(recipe_dict, "t.yaml", {"trainer.packing": True, **over,
                                                     "model.cuda_graphs": True})
        with pytest.raises(HarnessError, match=f"model.cuda_graphs.*{why}"):
            trainers.graph_blocker(asked, config, plan)
    off = dataclasses.replace(plan, cuda_graphs=False)
    assert trainers.graph_blocker(r, config, off) == "off"


def test_only_a_run_that_can_take_graphs_gives_up_pinned_batches(recipe_dict, tmp_path):
    gpu = dataclasses.replace(_gpu_plan(models.device_plan(recipe.ModelSpec())), device="cuda")
    sft = recipe.build(recipe_dict, "t.yaml")
    assert not trainers.build_config(sft, gpu, str(tmp_path)).dataloader_pin_memory
    eager = dataclasses.replace(gpu, cuda_graphs=False)
    assert trainers.build_config(sft, eager, str(tmp_path)).dataloader_pin_memory
    dpo = recipe.build({**recipe_dict, "method": "dpo"}, "t.yaml")  # never packed: no graphs
    assert trainers.build_config(dpo, gpu, str(tmp_path)).dataloader_pin_memory


def test_cuda_graphs_are_a_gpu_default_and_refused_on_a_cpu(recipe_dict, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = models.device_plan(recipe.ModelSpec())
    assert not cpu.cuda_graphs
    asked = recipe.build(recipe_dict, "t.yaml", {"model.cuda_graphs": True})
    with pytest.raises(HarnessError, match="model.cuda_graphs: CUDA graphs need a CUDA GPU"):
        trainers.check_device(asked, models.device_plan(asked.model))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.device_plan(recipe.ModelSpec()).as_params()["device/cuda_graphs"] is True
    assert not models.device_plan(recipe.ModelSpec(cuda_graphs=False)).cuda_graphs


@pytest.mark.fenced  # cuda_graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_training_through_cuda_graphs_matches_the_eager_run(recipe_dict, tmp_path):
    over = {**PACKED, "trainer.max_steps": 6, "data.builtin_rows": 96,
            "trainer.per_device_train_batch_size": 4}
    r, eager = _run(recipe_dict, tmp_path / "a", **over, **{"model.cuda_graphs": False})
    r, graphed = _run(recipe_dict, tmp_path / "b", **over)
    plan = models.device_plan(r.model)
    assert plan.cuda_graphs and plan.pad_packed
    assert not graphed.trainer.args.dataloader_pin_memory  # no pinning thread beside a capture
    # the first batch of a shape runs eagerly; every later batch of that shape is a replay
    assert graphed.metrics["cuda_graphs/steps"] >= 4 and graphed.metrics["cuda_graphs/shapes"] >= 1
    assert "cuda_graphs/steps" not in eager.metrics or eager.metrics["cuda_graphs/steps"] == 0
    loss = lambda res: [h["loss"] for h in res.log_history if "loss" in h]  # noqa: E731
    assert len(loss(graphed)) == 6
    assert loss(graphed) == pytest.approx(loss(eager), rel=2e-2)
    assert loss(graphed)[-1] != loss(graphed)[0]  # the adapter trained through the replays
    lora = lambda res: {n: p.float() for n, p in res.model.named_parameters()  # noqa: E731
                        if "lora_B" in n}
    for name, p in lora(graphed).items():
        want = lora(eager)[name]
        assert want.abs().sum() > 0  # lora_B starts at zero: trained
        torch.testing.assert_close(p, want, atol=2e-2 * want.abs().max().item(), rtol=2e-2)
    # afterwards the backbone is the model's own again (generation, evaluation)
    backbone = graphed.model.get_base_model().model
    assert "forward" not in vars(backbone)


@pytest.mark.fenced  # cuda_graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_a_replayed_graph_draws_new_dropout_masks_and_gives_gradients(tiny_model_dir, dropout):
    model = _lora(tiny_model_dir, 4, dropout)
    # eager, capture, replay, replay
    graphed, shapes, outs, grads = _steps(model, [_packed_batch()] * 4)
    assert graphed.steps == 3 and shapes == 1
    for a, b in zip(grads[1:], grads[2:]):
        assert set(a) == set(b) and all(g.abs().sum() > 0 for g in b.values())
    if dropout:  # each replay draws its own masks
        assert not torch.equal(outs[2], outs[3]) and not torch.equal(outs[1], outs[2])
    else:  # the replay computes what the model's own forward does
        torch.testing.assert_close(outs[2], outs[0])
        torch.testing.assert_close(outs[3], outs[0])
        for name, g in grads[3].items():
            torch.testing.assert_close(g, grads[0][name], atol=1e-2, rtol=1e-2)


@pytest.mark.fenced  # cuda_graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_step_that_cannot_be_captured_trains_on_without_graphs(tiny_model_dir, capfd):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).cuda()
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.5))
    model.train()
    base = model.get_base_model()
    # a host sync inside the forward (as some hooks do) cannot be captured
    base.model.layers[0].register_forward_hook(lambda m, i, o: o[0].sum().item() and None)
    cu = torch.tensor([0, 64], dtype=torch.int32, device="cuda")
    batch = {"input_ids": torch.randint(0, 1000, (1, 64), device="cuda"),
             "position_ids": torch.arange(64)[None].cuda(), "cu_seq_lens_q": cu,
             "cu_seq_lens_k": cu, "max_length_q": 64, "max_length_k": 64, "use_cache": False}
    with attention.training_attention(base, attention.NAME), \
            graphs.cuda_graphs(base, True) as graphed:
        for _ in range(3):
            base.model(**batch).last_hidden_state.float().sum().backward()  # nothing kept
        assert graphed.failed and graphed.steps == 0 and not graphed.graphs
    assert "CUDA graphs off for the rest of training" in capfd.readouterr().err
    torch.nn.functional.dropout(torch.ones(8, device="cuda"), 0.5)  # random ops work again
    # a forward that asks for a KV cache never goes through a graph
    with graphs.cuda_graphs(base, True) as graphed:
        assert graphed.key({**batch, "use_cache": True}) is None
        assert graphed.key(batch) is not None


@pytest.mark.fenced  # cuda_graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_shape_this_process_has_run_is_captured_at_once_for_a_new_model(tiny_model_dir):
    """A sweep's later trial: the same model shape, new adapters, the batch shapes seen before."""
    batch = _packed_batch()
    first, _, _, cold = _steps(_lora(tiny_model_dir, 4), [batch] * 3)
    assert first.steps == 2  # eager, capture, replay
    again, shapes, _, warm = _steps(_lora(tiny_model_dir, 4), [batch] * 2)  # the same weights
    assert again.steps == 2 and shapes == 1  # its first batch already a replay
    for name, g in warm[0].items():  # the replay computes what the first run's eager step did
        torch.testing.assert_close(g, cold[0][name], atol=1e-2, rtol=1e-2)
    assert all(g.abs().sum() > 0 for g in warm[1].values())
    other, _, _, _ = _steps(_lora(tiny_model_dir, 8), [batch] * 2)  # another rank: new GEMMs
    assert other.steps == 1


@pytest.mark.fenced  # cuda_graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_capture_at_once_that_fails_runs_eagerly_and_captures_the_next_time(tiny_model_dir,
                                                                              capfd):
    batch = _packed_batch()
    _steps(_lora(tiny_model_dir, 4), [batch])  # this process has run the shape
    model = _lora(tiny_model_dir, 4)
    synced = []

    def first_forward_only(module, args, out):  # state a model sets up once, with a host sync
        if not synced:
            synced.append(out[0].sum().item())
    model.get_base_model().model.layers[0].register_forward_hook(first_forward_only)
    graphed, _, _, grads = _steps(model, [batch] * 3)  # capture fails (eager), capture, replay
    assert synced and not graphed.failed and graphed.steps == 2
    assert "CUDA graphs off" not in capfd.readouterr().err
    assert all(g.abs().sum() > 0 for g in grads[2].values())


@pytest.mark.fenced  # cuda_graphs
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_batch_of_fewer_sequences_replays_the_graph_of_more(tiny_model_dir):
    model = _lora(tiny_model_dir, 4)
    more, fewer = _packed_batch(), _packed_batch((60, 64, 4), slots=3)  # 128 tokens each
    _, _, want, grads_want = _steps(model, [fewer])  # its own forward: eager
    graphed, shapes, outs, grads = _steps(model, [more, more, fewer])  # eager, capture, replay
    assert graphed.steps == 2 and shapes == 1  # no second shape: an empty sequence added
    torch.testing.assert_close(outs[2], want[0])
    for name, g in grads[2].items():
        torch.testing.assert_close(g, grads_want[0][name], atol=1e-2, rtol=1e-2)
