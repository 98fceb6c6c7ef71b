"""Conversation turns: the role rules, ShareGPT rows, and the harness's own mask of every
assistant turn, counted token by token on SmolLM2's real tokenizer and chat template."""
import pytest

from conftest import CONVERSATION, TOKENIZER, jsonl
from harness.config.recipe import DataSpec
from harness.core.errors import HarnessError
from harness.data import trainset, turns

SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(TOKENIZER)


def masker(tok, path=turns.INCREMENTAL) -> turns.TurnMasker:
    return turns.TurnMasker(tok, lambda _: path)


def turn_spans(tok, msgs) -> list[tuple[int, int]]:
    """Each turn's tokens [start, end) in the conversation's render (SmolLM2's template renders
    every turn as one ChatML block, so the renders of its prefixes bound them)."""
    bounds = [0] + [len(tok.apply_chat_template(msgs[:i + 1], tokenize=True, return_dict=True)
                        ["input_ids"]) for i in range(len(msgs))]
    return list(zip(bounds, bounds[1:]))


def trained_per_turn(tok, ids, mask, msgs) -> list[str]:
    """The trained text of each turn ('' where none is)."""
    return [tok.decode([t for t, m in zip(ids[a:b], mask[a:b]) if m])
            for a, b in turn_spans(tok, msgs)]


def test_every_assistant_turn_is_trained_through_its_end_of_turn_token(tok):
    ids, mask = turns.incremental_mask(tok, CONVERSATION)
    assert ids == tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)[
        "input_ids"] and len(mask) == len(ids)
    per_turn = trained_per_turn(tok, ids, mask, CONVERSATION)
    # each assistant turn: its content, <|im_end|> (the model learns to stop) and the newline
    # SmolLM2's template closes a turn with; not the role header the generation prompt gives
    assert per_turn == ["", "", "12 + 30 = 42<|im_end|>\n", "", "multiply(42, 3)<|im_end|>\n", "",
                        "42 x 3 = 126<|im_end|>\n"]
    counts = [sum(mask[a:b]) for a, b in turn_spans(tok, CONVERSATION)]
    assert counts == [0, 0, 12, 0, 10, 0, 12]  # as bench/turn_masks.py prints them
    eos = [i for i, t in enumerate(ids) if t == tok.eos_token_id]
    assert sum(mask[i] for i in eos) == 3  # the three assistant turns' <|im_end|>, no other


@pytest.mark.parametrize("train_turns, trained", [
    ("all", ["12 + 30 = 42", "multiply(42, 3)", "42 x 3 = 126"]),
    ("last", ["42 x 3 = 126"]),
])
def test_conversations_rows_train_the_turns_train_turns_names(tmp_path, tok, train_turns,
                                                                trained):
    share = {"conversations": [{"from": SHAREGPT[m["role"]], "value": m["content"]}
                               for m in CONVERSATION]}
    path = jsonl(tmp_path / "c.jsonl", [share, share])
    spec = DataSpec(train=path, train_turns=train_turns)  # the format told by the column
    train, _, info = trainset.load_train(spec, 0, masker=masker(tok))
    assert info["format"] == "conversations" and len(train) == 2
    row = train[0]
    if train_turns == "last":  # today's rows: every turn but the last is TRL's prompt
        assert row["prompt"] == CONVERSATION[:-1] and row["completion"] == CONVERSATION[-1:]
        assert "turn_mask" not in info
        return
    assert info["turn_mask"] == turns.INCREMENTAL
    assert [{"role": m["role"], "content": m["content"]} for m in row["messages"]] == \
        CONVERSATION
    texts = [t for t in trained_per_turn(tok, row["input_ids"], row["assistant_masks"],
                                         CONVERSATION) if t]
    assert texts == [f"{t}<|im_end|>\n" for t in trained]


def test_the_marker_path_leaves_the_messages_for_trl(tmp_path, tok):
    path = jsonl(tmp_path / "m.jsonl", [{"messages": CONVERSATION}] * 3)
    train, ev, info = trainset.load_train(DataSpec(train=path, eval_rows=1), 0,
                                          masker=masker(tok, turns.TRL_MARKERS))
    assert info["turn_mask"] == turns.TRL_MARKERS
    assert train.column_names == ev.column_names == ["messages"]
    assert turns.masked_by_trl(train) and turns.masked_by_trl(ev)
    own, _, _ = trainset.load_train(DataSpec(train=path), 0, masker=masker(tok))
    assert own.column_names == ["messages", "input_ids", "assistant_masks"]
    assert not turns.masked_by_trl(own) and not turns.masked_by_trl(None)


def test_tokenized_rows_are_measured_as_they_are(tmp_path, tok):
    path = jsonl(tmp_path / "m.jsonl", [{"messages": CONVERSATION}] * 2)
    train, _, _ = trainset.load_train(DataSpec(train=path), 0, masker=masker(tok))
    n = len(train[0]["input_ids"])
    assert trainset.check_lengths(train, tok, n, path) == 0
    with pytest.raises(HarnessError, match="every row is longer than trainer.max_length"):
        trainset.check_lengths(train, tok, n - 1, path)


# renders an assistant turn that later turns follow without its content: not prefix-consistent
# on rows whose assistant says DROP (as a template that drops earlier turns' reasoning does)
DROPPING = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
            "{% if m['role'] == 'assistant' and not loop.last and 'DROP' in m['content'] %}"
            "{{ '<|im_end|>\n' }}{% else %}{{ m['content'] + '<|im_end|>\n' }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_a_template_that_is_not_prefix_consistent_is_refused_naming_the_file_row(tmp_path, tok):
    from transformers import AutoTokenizer
    dropping = AutoTokenizer.from_pretrained(TOKENIZER)
    dropping.chat_template = DROPPING
    fine = CONVERSATION
    bad = [*CONVERSATION[:2], {"role": "assistant", "content": "DROP this"}, *CONVERSATION[3:]]
    path = jsonl(tmp_path / "d.jsonl", [{"messages": m} for m in (fine, fine, bad, fine)])
    with pytest.raises(HarnessError) as e:  # shuffled and sliced first: still the file's row
        trainset.load_train(DataSpec(train=path), 0, masker=masker(dropping))
    assert str(e.value) == (
        f"{path}: row 3: data.train_turns: the chat template renders messages[2] (an assistant "
        "turn) differently once later turns follow (it is not prefix-consistent), so the turns "
        "cannot be masked one by one; train the last turn only with data.train_turns: last")
    rows, _, _ = trainset.load_train(DataSpec(train=path, train_turns="last"), 0)
    assert len(rows) == 4  # the way out the message names


@pytest.mark.parametrize("rows, needle", [
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}],
     "row 1: conversations[1]: unknown from 'bot' (known: human, user, gpt, assistant, system, "
     "tool)"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]}],
     "row 1: conversations[1] must be {from: human|user|gpt|assistant|system|tool, value: str}"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                         {"from": "gpt", "value": "c"}]}],
     "row 1: conversations[1]: two user turns in a row"),
    ([{"messages": [CONVERSATION[1], {"role": "tool", "content": "7"}, CONVERSATION[2]]}],
     "row 1: messages[1]: a tool turn must follow the assistant turn that called the tool"),
    ([{"messages": [*CONVERSATION[1:3], {"role": "tool", "content": "7"}, CONVERSATION[1],
                    CONVERSATION[2]]}],
     "row 1: messages[3]: a user turn after a tool turn (the assistant answers the tool's result "
     "first)"),
    ([{"messages": [{"role": "assistant", "content": "Hi"}, *CONVERSATION[1:3]]}],
     "row 1: messages[0]: the conversation opens with an assistant turn, which answers nothing"),
])
def test_bad_conversations_get_one_line_naming_file_and_row(tmp_path, tok, rows, needle):
    path = jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(HarnessError) as e:
        trainset.load_train(DataSpec(train=path, shuffle=False), 0, masker=masker(tok))
    assert needle in str(e.value) and str(e.value).startswith(path)
    assert "\n" not in str(e.value)


def test_tool_turns_may_follow_one_call_several_in_a_row(tok):
    msgs = [*CONVERSATION[1:5], {"role": "tool", "content": "126"},
            {"role": "tool", "content": "also 126"}, CONVERSATION[-1]]
    turns.check_messages(msgs, "d.jsonl", 1)
    ids, mask = turns.incremental_mask(tok, msgs)
    per_turn = trained_per_turn(tok, ids, mask, msgs)
    assert [bool(t) for t in per_turn] == [m["role"] == "assistant" for m in msgs]


def test_an_opening_assistant_turn_is_context_when_only_the_last_trains(tmp_path, tok):
    greeting = [{"role": "assistant", "content": "Hi, what shall we add?"}, *CONVERSATION[1:3]]
    path = jsonl(tmp_path / "g.jsonl", [{"messages": greeting}])
    rows, _, _ = trainset.load_train(DataSpec(train=path, train_turns="last"), 0)
    assert rows[0]["prompt"] == greeting[:2] and rows[0]["completion"] == greeting[2:]
