"""Every assistant turn trained through TRL: the path chosen per chat template, the labels a real
SFTTrainer builds by each path (token by token, per turn), and a tiny Llama trained on
multi-turn rows through the harness's trainer, packed or not, its rows handed to a second
trainer."""
import math

import pytest

from conftest import CONVERSATION, MARKED_TEMPLATE as MARKED, TOKENIZER, jsonl
from harness import models
from harness.config import recipe
from harness.config.recipe import DataSpec
from harness.core.errors import HarnessError
from harness.data import trainset, turns
from harness.pipeline import prepared
from harness.train import assistant_loss, trainers

def conversation(k: int) -> list[dict]:
    """The tests' conversation with every text naming its row `k`."""
    return [{**m, "content": f"{m['content']} (row {k})"} for m in CONVERSATION]


def trained_text(msgs: list[dict], train_turns: str = "all") -> str:
    """What a conversation trains: each assistant turn's content, <|im_end|> and the newline
    after it (the last turn's only under train_turns last)."""
    said = [m["content"] for m in msgs if m["role"] == "assistant"]
    return "".join(f"{s}<|im_end|>\n" for s in (said if train_turns == "all" else said[-1:]))


def tokenizer(template: str | None = None):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    if template is not None:
        tok.chat_template = template
    return tok


def test_the_path_follows_the_chat_template():
    from pathlib import Path

    import trl
    assert assistant_loss.choose_path(tokenizer()) == turns.INCREMENTAL  # SmolLM2's: no markers
    assert assistant_loss.choose_path(tokenizer(MARKED)) == turns.TRL_MARKERS
    # a template TRL ships a training variant of (SFTTrainer swaps it in itself)
    qwen = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    assert assistant_loss.choose_path(tokenizer(qwen)) == turns.TRL_MARKERS
    with pytest.raises(HarnessError, match="^model.name: the model's tokenizer has no chat "):
        assistant_loss.choose_path(tokenizer(""))


def sft_labels(tok, data: str, train_turns: str, path: str, tmp_path) -> tuple[list, list]:
    """(input_ids, labels) of the first row as a real SFTTrainer prepares it (nothing trained),
    its config set as harness.train.trainers.train sets it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer
    rows, _, _ = trainset.load_train(DataSpec(train=data, train_turns=train_turns, shuffle=False),
                                     0, masker=turns.TurnMasker(tok, lambda _: path))
    config = SFTConfig(output_dir=str(tmp_path), report_to="none", max_steps=1, use_cpu=True,
                       activation_checkpointing=False)
    assistant_loss.configure(config, rows)
    assert config.assistant_only_loss is (train_turns == "all" and path == turns.TRL_MARKERS)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                         intermediate_size=32, num_attention_heads=2))
    row = SFTTrainer(model=model, args=config, train_dataset=rows,
                     processing_class=tok).train_dataset[0]
    return row["input_ids"], row["labels"]


def per_turn(tok, ids, labels, msgs) -> list[int]:
    """Trained tokens in each turn (the renders of the conversation's prefixes bound them)."""
    bounds = [0] + [len(tok.apply_chat_template(msgs[:i + 1], tokenize=True, return_dict=True)
                        ["input_ids"]) for i in range(len(msgs))]
    return [sum(lab != -100 for lab in labels[a:b]) for a, b in zip(bounds, bounds[1:])]


def test_trl_markers_and_the_harness_mask_train_the_same_tokens(tmp_path):
    tok = tokenizer(MARKED)
    msgs = CONVERSATION
    data = jsonl(tmp_path / "c.jsonl", [{"messages": msgs}])
    got = {(turns_, path): sft_labels(tok, data, turns_, path, tmp_path)
           for turns_, path in [("all", turns.INCREMENTAL), ("all", turns.TRL_MARKERS),
                                ("last", turns.INCREMENTAL)]}
    ids = got["all", turns.INCREMENTAL][0]
    assert all(i == ids for i, _ in got.values())  # one rendering
    counts = {k: per_turn(tok, ids, labels, msgs) for k, (_, labels) in got.items()}
    # system, user, assistant, user, assistant, tool, assistant, as bench/turn_masks.py prints
    assert counts["all", turns.INCREMENTAL] == counts["all", turns.TRL_MARKERS] == \
        [0, 0, 12, 0, 10, 0, 12]
    assert counts["last", turns.INCREMENTAL] == [0, 0, 0, 0, 0, 0, 12]
    assert got["all", turns.INCREMENTAL][1] == got["all", turns.TRL_MARKERS][1]  # token by token
    for (train_turns, _), (_, labels) in got.items():
        assert tok.decode([t for t in labels if t != -100]) == trained_text(msgs, train_turns)


@pytest.mark.slow
@pytest.mark.parametrize("path, packing", [(turns.INCREMENTAL, False), (turns.INCREMENTAL, True),
                                           (turns.TRL_MARKERS, True)])
def test_sft_trains_a_step_on_every_assistant_turn_and_hands_its_rows_on(
        recipe_dict, tmp_path, path, packing):
    data = jsonl(tmp_path / "chat.jsonl", [{"messages": conversation(k)} for k in range(4)])
    r = recipe.build(recipe_dict, "t.yaml", {"data.train": data, "trainer.max_steps": 1,
                                             "trainer.packing": packing,
                                             "trainer.max_length": 256})  # whole conversations
    plan = models.device_plan(r.model)
    tok = models.load_tokenizer(r.model)
    if path == turns.TRL_MARKERS:
        tok.chat_template = MARKED
    tr, ev, info = prepared.load_rows(r, tok)
    assert info["turn_mask"] == path
    handover = trainers.Handover()  # what a sweep's trials share

    def run(rr, out):
        res = trainers.train(rr, models.load_model(rr.model, plan), tok, tr, ev, plan,
                             str(tmp_path / out), handover=handover)
        losses = [h["loss"] for h in res.log_history if "loss" in h]
        assert len(losses) == 1 and math.isfinite(losses[0])
        return res
    first = run(r, "a")
    assert first.trainer.args.assistant_only_loss is (path == turns.TRL_MARKERS)
    batch = next(iter(first.trainer.get_train_dataloader()))
    assert (batch["input_ids"].shape[0] == 1) is packing  # packed: one padding-free row
    seen = []
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        text = tok.decode(ids)
        order = [k for _, k in sorted((text.index(f"(row {k})"), k) for k in range(4)
                                      if f"(row {k})" in text)]
        seen += order
        # the batch's labels: every assistant turn of each conversation in it, nothing else
        assert tok.decode(ids[labels != -100]) == "".join(trained_text(conversation(k))
                                                          for k in order)
    assert seen
    # a trial of other optimiser values takes the rows TRL prepared, labels and all
    second = run(recipe.with_values(r, {"trainer.learning_rate": 1e-3}), "b")
    assert second.trainer.train_dataset is first.trainer.train_dataset
    assert second.trainer.args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert second.trainer.args.assistant_only_loss is False  # TRL prepared them already
