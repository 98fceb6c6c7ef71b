"""A golden set cut from the training data: which rows, never trained on, in every format."""
import json

import pytest

from conftest import jsonl
from harness.config.recipe import DataSpec
from harness.core.errors import HarnessError
from harness.data import heldrows, trainset
from harness.data.heldrows import HeldRows


def _chats(n: int) -> list[dict]:
    """Multi-turn rows with a system turn: the prompt is everything before the last answer."""
    return [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"hi {i}"},
                          {"role": "assistant", "content": f"hello {i}"},
                          {"role": "user", "content": f"what is {i} + 1?"},
                          {"role": "assistant", "content": f"{i + 1}"}]} for i in range(n)]


def _spec(train: str, **kw) -> DataSpec:
    """Rows kept as prompt/completion (train_turns: last), so training rows compare with the held
    ones as converted; which rows are held does not depend on how the turns are masked."""
    return DataSpec(train=train, train_turns="last", **kw)


def _texts(ds) -> set[str]:
    return {json.dumps(r, sort_keys=True) for r in ds}


def test_held_rows_never_reach_training_nor_eval_and_stay_out_for_any_later_seed(tmp_path):
    path = jsonl(tmp_path / "chats.jsonl", _chats(40))
    spec = _spec(path, eval_rows=5)
    held = HeldRows(0.25, seed=42)
    train, evalset, info = trainset.load_train(spec, 42, held=held)
    assert len(held.rows) == 10 and info["rows_golden"] == 10
    assert len(train) == 25 and len(evalset) == 5 and info["rows_train"] == 25
    cut = {heldrows.digest(r) for r in held.rows}
    seen = [heldrows.digest(dict(r)) for r in list(train) + list(evalset)]
    assert len(seen) == 30 and not cut & set(seen)  # disjoint from training and eval rows
    # the prompt is the conversation up to its last answer, system kept; the reference that answer
    prompts, refs = held.examples(path)
    i = int(refs[0]) - 1
    assert prompts[0] == _chats(40)[i]["messages"][:4] and prompts[0][0]["role"] == "system"
    # a trial with another seed (sweep.repeat_best) or fewer rows shuffles differently, and the
    # held rows still stay out: the choice is made once
    again, _, _ = trainset.load_train(_spec(path, eval_rows=5, max_rows=20), 7,
                                      held=held)
    assert len(again) == 20 and not cut & {heldrows.digest(dict(r)) for r in again}
    assert {heldrows.digest(r) for r in held.rows} == cut


def test_the_choice_is_the_seeds_whatever_the_row_order(tmp_path):
    rows = _chats(30)
    a, b, c = HeldRows(6, seed=1), HeldRows(6, seed=1), HeldRows(6, seed=2)
    trainset.load_train(_spec(jsonl(tmp_path / "a.jsonl", rows)), 0, held=a)
    trainset.load_train(_spec(jsonl(tmp_path / "b.jsonl", rows[::-1])), 0, held=b)
    trainset.load_train(_spec(jsonl(tmp_path / "a.jsonl", rows)), 0, held=c)
    key = lambda h: sorted(heldrows.digest(r) for r in h.rows)  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)


@pytest.mark.parametrize("row, prompt, reference", [
    ({"prompt": "2+2?", "completion": "4"}, [{"role": "user", "content": "2+2?"}], "4"),
    ({"instruction": "Add", "input": "2+2", "output": "4"},
     [{"role": "user", "content": "Add\n\n2+2"}], "4"),
    ({"question": "2+2?", "answer": "4"}, [{"role": "user", "content": "2+2?"}], "4"),
    ({"prompt": [{"role": "user", "content": "2+2?"}],
      "completion": [{"role": "assistant", "content": "4"}]},
     [{"role": "user", "content": "2+2?"}], "4"),
])
def test_every_supervised_format_gives_a_prompt_and_a_reference(tmp_path, row, prompt,
                                                                 reference):
    path = jsonl(tmp_path / "d.jsonl", [_other(row, i) for i in range(1, 7)])
    with pytest.raises(HarnessError, match="leaves none to train on"):
        trainset.load_train(_spec(path), 0, held=HeldRows(6, seed=0))
    held = HeldRows(5, seed=0)
    train, _, _ = trainset.load_train(_spec(path), 0, held=held)
    assert len(train) == 1
    expected = [(_other(prompt, i), _other(reference, i)) for i in range(1, 7)]
    pairs = list(zip(*held.examples(path)))
    assert len(pairs) == 5 and all(pair in expected for pair in pairs)


def _other(value, i: int):
    """`value` (a row, a prompt or a reference) with i+i in place of 2+2 and 2i in place of 4."""
    text = json.dumps(value).replace("2+2", f"{i}+{i}").replace('"4"', f'"{2 * i}"')
    return json.loads(text)


def test_text_rows_have_no_answer_to_hold_out(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"text": f"row {i}"} for i in range(4)])
    with pytest.raises(HarnessError, match="needs rows with an answer") as e:
        trainset.load_train(_spec(path), 0, held=HeldRows(1, seed=0))
    assert e.value.key == "eval.from_train"


def test_a_share_is_at_least_one_row():
    assert heldrows.count(0.01, 10) == 1 and heldrows.count(0.1, 200) == 20
    assert heldrows.count(7, 200) == 7


def test_the_rows_kept_carry_their_lines_in_the_file():
    """Errors after the cut (a conversation the mask cannot split) name the row's own line."""
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    held = HeldRows(3, seed=0)
    kept, lines = held.take(rows, "f.jsonl", list(range(5, 15)))  # data.skip_rows: 4
    assert len(kept) == len(lines) == 7
    assert all(r == rows[line - 5] for r, line in zip(kept, lines))
    assert {heldrows.digest(r) for r in held.rows}.isdisjoint(heldrows.digest(r) for r in kept)
