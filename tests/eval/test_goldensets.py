"""Golden sets as data: the split of a sweep's objective set into selection and held-out parts."""
import random

import pytest

from harness.eval import goldensets
from harness.eval.goldensets import GoldenSet, Manifest


def _set(n: int, rows=None) -> GoldenSet:
    rows = rows or [(f"question {i}?", f"#### {i}") for i in range(n)]
    m = Manifest(name="math", source="m.jsonl", metrics=["numeric_accuracy"])
    return GoldenSet(m, "m.yaml", [q for q, _ in rows], [a for _, a in rows])


@pytest.mark.parametrize("n,share,held", [(40, 0.5, 20), (4, 0.5, 2), (2, 0.9, 1), (10, 0.01, 1)])
def test_a_split_holds_out_its_share_and_leaves_some_to_select_on(n, share, held):
    select, out = goldensets.split(_set(n), share, seed=0)
    assert (select.name, out.name) == ("math", "math_heldout")
    assert len(out.prompts) == held and len(select.prompts) == n - held
    assert sorted(select.prompts + out.prompts) == sorted(_set(n).prompts)
    for part in (select, out):  # each prompt keeps its own answer
        assert all(a == f"#### {q.split()[1][:-1]}" for q, a in zip(part.prompts, part.references))


def test_the_same_examples_are_held_out_whatever_the_row_order_and_the_seed_changes_them():
    rows = [(f"question {i}?", f"#### {i}") for i in range(40)]
    _, held = goldensets.split(_set(40, rows), 0.5, seed=0)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    _, again = goldensets.split(_set(40, shuffled), 0.5, seed=0)
    assert set(held.prompts) == set(again.prompts)
    _, other = goldensets.split(_set(40, rows), 0.5, seed=1)
    assert set(held.prompts) != set(other.prompts)


CHAT = [{"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy?"}]


def _chat_manifest(tmp_path, rows: list[dict]) -> str:
    from conftest import jsonl
    jsonl(tmp_path / "chat.jsonl", rows)
    (tmp_path / "chat.yaml").write_text("name: chat\ntask: generation\nsource: chat.jsonl\n"
                                        "prompt_field: prompt\nreference_field: answer\n"
                                        "max_new_tokens: 4\nsystem_prompt: Ignored here.\n"
                                        "metrics: [rougeL, perplexity]\n")
    return str(tmp_path / "chat.yaml")


def test_a_multi_turn_prompt_renders_through_the_chat_template_for_decoding_and_perplexity(
        tmp_path, tiny_model_dir):
    from harness import models
    from harness.config.recipe import ModelSpec
    from harness.eval import scoring
    path = _chat_manifest(tmp_path, [{"prompt": CHAT, "answer": "Rome"},
                                     {"prompt": "Capital of Spain?", "answer": "Madrid"}])
    gs = goldensets.load(path)
    assert gs.prompts[0] == CHAT and gs.prompts[1] == "Capital of Spain?"
    spec = ModelSpec(name=tiny_model_dir)
    tok = models.load_tokenizer(spec)
    # the conversation as it is (its own system turn wins over the manifest's); a string as the
    # user's turn under the manifest's system prompt: one path for both
    msgs = [scoring.chat_prompt(tok, p, gs.manifest.system_prompt) for p in gs.prompts]
    assert scoring.render(tok, msgs[0]) == tok.apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True)
    assert msgs[1] == [{"role": "system", "content": "Ignored here."},
                       {"role": "user", "content": "Capital of Spain?"}]
    assert "And of Italy?" in scoring.render(tok, msgs[0], "Rome")
    model = models.load_model(spec, models.device_plan(spec))
    res = scoring.evaluate_set(model, tok, gs, batch_size=2)
    # the reference's NLL counts the reference's tokens after the whole conversation
    nll, counts = scoring.reference_nll(model, tok, [scoring.render(tok, msgs[0])],
                                        [scoring.render(tok, msgs[0], "Rome")], 1)
    assert res.columns["nll"][0] == pytest.approx(nll[0]) and res.columns["tokens"][0] == counts[0]
    assert res.examples[0]["prompt"] == CHAT and "rougeL" in res.examples[0]


@pytest.mark.parametrize("prompt, needle", [
    (CHAT + [{"role": "assistant", "content": "Rome"}], "must end with the user's turn"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
      {"role": "user", "content": "c"}], "system turn must come first"),
    ([], "must end with the user's turn"),
])
def test_a_bad_conversation_prompt_is_named_with_its_row(tmp_path, prompt, needle):
    from harness.core.errors import HarnessError
    path = _chat_manifest(tmp_path, [{"prompt": CHAT, "answer": "Rome"},
                                     {"prompt": prompt, "answer": "x"}])
    with pytest.raises(HarnessError, match=needle) as e:
        goldensets.load(path)
    assert e.value.row == 2
