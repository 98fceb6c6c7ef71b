import pytest

from conftest import SHARED, TOKENIZER, jsonl
from harness.data import trainset
from harness.core.errors import HarnessError
from harness.config.recipe import DataSpec

USER = {"role": "user", "content": "What is 2 + 3?"}
BOT = {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}


@pytest.mark.parametrize("row, fmt", [
    ({"messages": [USER, BOT]}, "messages"),
    ({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "instruction"),
    ({"prompt": "2+3?", "completion": "5"}, "prompt_completion"),
    ({"prompt": [USER], "completion": [BOT]}, "prompt_completion"),
    ({"question": "2+3?", "answer": "#### 5"}, "question_answer"),
    ({"text": "Once upon a time"}, "text"),
])
def test_every_format_becomes_trl_prompt_completion(tmp_path, row, fmt):
    """A conversation too, training its last turn only (tests/data/test_turns.py: all turns)."""
    path = jsonl(tmp_path / "d.jsonl", [row, row])
    train, ev, info = trainset.load_train(DataSpec(train=path, train_turns="last"), seed=0)
    assert info["format"] == fmt and len(train) == 2 and ev is None
    got = train[0]
    if fmt == "text":
        assert got["text"] == "Once upon a time"
        return
    assert got["prompt"][-1]["role"] == "user" and got["completion"][0]["role"] == "assistant"
    if fmt == "instruction":
        assert got["prompt"][0]["content"] == "Add.\n\n2 and 3"


def test_csv_and_parquet_load(tmp_path):
    import pandas as pd
    df = pd.DataFrame({"question": ["a?", "b?"], "answer": ["#### 1", "#### 2"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        train, _, info = trainset.load_train(DataSpec(train=str(tmp_path / name)), seed=0)
        assert len(train) == 2 and info["format"] == "question_answer"


def test_gsm8k_slices_hold_out_eval_and_skip_rows():
    spec = DataSpec(train=str(SHARED / "data/gsm8k/train.jsonl"), skip_rows=40, max_rows=30,
                    eval_rows=10)
    train, ev, info = trainset.load_train(spec, seed=3)
    assert (len(train), len(ev)) == (30, 10)
    first40 = {r["question"] for r in trainset.load_source(spec.train).select(range(40))}
    assert not first40 & {r["prompt"][0]["content"] for r in train}


def test_builtin_math_needs_no_files():
    train, _, info = trainset.load_train(DataSpec(builtin_rows=12, builtin_seed=5), seed=0)
    assert len(train) == 12 and train[0]["completion"][0]["content"].splitlines()[-1][:5] == "#### "


@pytest.mark.parametrize("rows, needle", [
    (['{"question": "a", "answer": "b"}', "{not json"], "row 2: not valid JSON"),
    (['["a", "b"]'], "row 1: each line must be a JSON object"),
    ([{"q": "a", "a": "b"}], "cannot tell the row format from columns ['q', 'a']"),
    ([{"question": "a", "answer": ""}], "row 1: column 'answer' is empty"),
    ([{"messages": [BOT, USER]}], "row 1: the last turn must be the assistant's"),
    ([{"messages": [USER, USER, BOT]}], "row 1: messages[1]: two user turns in a row"),
    ([{"messages": [USER, {"role": "system", "content": "x"}, BOT]}],
     "messages[1]: a system turn must come first"),
    ([{"messages": [{"role": "robot", "content": "x"}, BOT]}], "messages[0] must be {role"),
])
def test_bad_rows_name_file_and_row(tmp_path, rows, needle):
    path = jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(HarnessError) as e:
        trainset.load_train(DataSpec(train=path, shuffle=False), seed=0)
    assert needle in str(e.value) and str(e.value).startswith(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(HarnessError, match="empty.jsonl: (data.train: )?the dataset has no rows"):
        trainset.load_train(DataSpec(train=str(tmp_path / "empty.jsonl")), seed=0)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(HarnessError, match="blank.jsonl: (data.train: )?the dataset has no rows"):
        trainset.load_train(DataSpec(train=str(tmp_path / "blank.jsonl")), seed=0)
    with pytest.raises(HarnessError, match="does not exist"):
        trainset.load_train(DataSpec(train="./nope/data.jsonl"), seed=0)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(HarnessError, match="unsupported file type"):
        trainset.load_train(DataSpec(train=str(tmp_path / "d.txt")), seed=0)


@pytest.fixture
def hub_state(monkeypatch):
    """The Hub probe's memory and the offline switches it sets, put back after the test."""
    import sys

    from harness.data import hub
    monkeypatch.setattr(hub, "_answered", False)
    monkeypatch.setattr(hub, "_offline_by_us", False)
    monkeypatch.setattr(hub, "_why", None)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for mod in ("huggingface_hub.constants", "datasets.config"):
        if mod in sys.modules:
            monkeypatch.setattr(sys.modules[mod], "HF_HUB_OFFLINE", False)
    return hub


def test_unreachable_hub_dataset_fails_fast(monkeypatch, hub_state):
    import time
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    t = time.monotonic()
    with pytest.raises(HarnessError, match=r"cannot load dataset 'openai/gsm8k': .* \(the Hub is "
                                           r"unreachable: 127.0.0.1:9: Connection refused\)"):
        trainset.load_source("openai/gsm8k", "train", "main")
    assert time.monotonic() - t < 30


def test_a_hub_that_answers_again_takes_the_process_back_online(monkeypatch, hub_state):
    """A blip must not keep a long sweep offline: the next probe finds the Hub and the HF
    libraries go back online; a user's own HF_HUB_OFFLINE is never undone."""
    import os
    import socket
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert not hub_state.go_offline_if_unreachable() and os.environ["HF_HUB_OFFLINE"] == "1"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_state.go_offline_if_unreachable()
    assert "HF_HUB_OFFLINE" not in os.environ and hub_state.offline_reason() is None
    monkeypatch.setattr(hub_state, "_answered", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's choice
    assert not hub_state.go_offline_if_unreachable() and os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("row", [
    {"prompt": "2+3?", "chosen": "#### 5", "rejected": "#### 6"},
    {"prompt": [USER], "chosen": [BOT], "rejected": [{"role": "assistant", "content": "#### 6"}]},
    {"chosen": [USER, BOT], "rejected": [USER, {"role": "assistant", "content": "#### 6"}]},
    {"chosen": "2+3? #### 5", "rejected": "2+3? #### 6"},
])
def test_preference_formats_explicit_and_implicit_prompt(tmp_path, row):
    from transformers import AutoTokenizer
    path = jsonl(tmp_path / "p.jsonl", [row, row])
    train, _, info = trainset.load_train(DataSpec(train=path), seed=0, kind="preference")
    assert info["format"] == "preference" and len(train) == 2
    got = train[0]
    assert got["chosen"] != got["rejected"]
    assert ("prompt" in got) == ("prompt" in row)
    # the length check the pipeline runs next (implicit-prompt rows have no prompt column)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    assert trainset.check_lengths(train, tok, 1024, path) == 0
    with pytest.raises(HarnessError, match="every row is longer than trainer.max_length=2"):
        trainset.check_lengths(train, tok, 2, path)


@pytest.mark.parametrize("rows, needle", [
    ([{"prompt": "a", "chosen": "x"}], "cannot tell the row format"),
    ([{"prompt": "a", "chosen": "x", "rejected": ""}], "row 1: column 'rejected' is empty"),
    ([{"prompt": "a", "chosen": "x", "rejected": "x"}] * 3, "chosen equals rejected on every row"),
])
def test_bad_preference_rows(tmp_path, rows, needle):
    path = jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(HarnessError) as e:
        trainset.load_train(DataSpec(train=path, shuffle=False), seed=0, kind="preference")
    assert needle in str(e.value) and path in str(e.value)


def test_builtin_preferences_and_unknown_builtin():
    train, _, info = trainset.load_train(DataSpec(train="builtin:math_preferences", builtin_rows=6),
                                     seed=0, kind="preference")
    assert len(train) == 6 and info["format"] == "preference"
    with pytest.raises(HarnessError, match="did you mean builtin:math"):
        trainset.load_train(DataSpec(train="builtin:maths"), seed=0)


def test_shapes_of_one_trainer_are_detected_only_for_it():
    cols = ["prompt", "completion", "label"]
    assert trainset.detect_format(cols, "x.jsonl") == "prompt_completion"  # SFT: the label unused
    assert trainset.detect_format(cols, "x.jsonl", kind="unpaired") == "unpaired"  # KTO
    assert trainset.detect_format(["prompt", "answer"], "x.jsonl", kind="prompt") == "prompt"  # GRPO
    with pytest.raises(HarnessError, match="cannot tell the row format"):
        trainset.detect_format(["prompt", "answer"], "x.jsonl", kind="supervised")
