"""What a command loads once (harness.pipeline.prepared): recipe checks, init_from lookups, the
decoding
choice, and scoring the starting model as the trials will be scored."""
import re

import pytest

from harness.pipeline import prepared
from harness.config import recipe



@pytest.mark.slow
def test_init_from_unknown_run_is_one_line(recipe_dict):
    from harness.core.errors import HarnessError
    from harness.tracking.tracker import Tracker
    r = recipe.build(recipe_dict, "t.yaml", {"model.init_from": "deadbeef"})
    with pytest.raises(HarnessError, match="model.init_from: no MLflow run 'deadbeef'"):
        prepared.prepare(r, Tracker(r))


def _lively(recipe_dict, lively_model_dir) -> dict:
    """The recipe on a model whose greedy outputs differ from prompt to prompt: outputs compared
    on it could differ (the std-0.02 tiny model answers every prompt the same)."""
    return dict(recipe_dict, model={"name": lively_model_dir})


def _varied(results: dict) -> None:
    for res in results.values():
        if "predictions" in res.columns:
            assert len(set(res.columns["predictions"])) == len(res.columns["predictions"]) > 1


def test_the_base_scored_inside_a_zero_adapter_gives_the_base_outputs_exactly(recipe_dict,
                                                                             lively_model_dir):
    """Compiled decoding scores the base inside the trials' LoRA structure: with peft's B = 0
    every adapter adds exactly 0, so the greedy outputs and the perplexity are the base's."""
    from peft import PeftModel
    r = recipe.build(_lively(recipe_dict, lively_model_dir), "t.yaml", {"eval.max_new_tokens": 12})
    prep = prepared.prepare(r, with_data=False)
    plain = prepared.evaluate(prep, prepared.as_trials_are(prep, prep.load_model()))
    prep.compiled = True  # a GPU's choice; generation stays eager here, the model is what differs
    wrapped = prepared.as_trials_are(prep, prep.load_model())
    assert isinstance(wrapped, PeftModel) and wrapped.peft_config["default"].r == r.adapter.r
    scored = prepared.evaluate(prep, wrapped)
    _varied(plain)
    for name, res in plain.items():
        assert res.columns["predictions"] == scored[name].columns["predictions"]
        assert res.columns["nll"] == scored[name].columns["nll"]
        assert res.metrics == scored[name].metrics


@pytest.mark.slow
def test_a_trained_adapter_is_merged_for_scoring(recipe_dict, lively_model_dir):
    """The tuned model is scored with its adapter merged (one matmul a layer, not three), on a
    CPU as on a GPU, and scores as the adapter does (fp32 rounding is tiny); a 4-bit base is
    not merged into."""
    import dataclasses

    import torch
    from peft import get_peft_model

    from harness import models
    r = recipe.build(_lively(recipe_dict, lively_model_dir), "t.yaml", {"eval.max_new_tokens": 12})
    prep = prepared.prepare(r, with_data=False)
    torch.manual_seed(1)
    tuned = get_peft_model(prep.load_model(), models.lora_config(r.adapter))
    for name, p in tuned.named_parameters():
        if "lora_B" in name:  # a trained adapter: B is no longer zero
            torch.nn.init.normal_(p, std=0.05)
    layers = [m for m in tuned.modules() if hasattr(m, "merged")]
    plain = prepared.evaluate(prep, tuned)
    merged = prepared.evaluate(prep, models.merged_for_scoring(tuned, r.model, prep.plan))
    assert layers and all(m.merged for m in layers)
    _varied(plain)
    gpu = dataclasses.replace(prep.plan, device="cuda")
    for name, res in plain.items():
        assert res.columns["predictions"] == merged[name].columns["predictions"]
        assert res.columns["nll"] == pytest.approx(merged[name].columns["nll"], rel=1e-4)
    bnb = r.model.model_copy(update={"quantization": "4bit"})
    fresh = get_peft_model(prep.load_model(), models.lora_config(r.adapter))
    assert not any(m.merged for m in models.merged_for_scoring(fresh, bnb, gpu).modules()
                   if hasattr(m, "merged"))


def test_compiled_decoding_is_refused_on_a_cpu(recipe_dict):
    from harness.core.errors import HarnessError
    r = recipe.build(recipe_dict, "t.yaml", {"eval.decoding": "compiled"})
    with pytest.raises(HarnessError, match="t.yaml: eval.decoding: compiled decoding needs a "
                                           "CUDA GPU"):
        prepared.prepare(r, with_data=False)


def test_saved_start_scores_are_reused_only_for_the_same_examples(recipe_dict):
    """A resumed sweep reads its start's scores back only when they are of the same examples
    in the same order: another held-out share, or no split, scores the start again."""
    import json
    r = recipe.build(recipe_dict, "t.yaml", {"eval.max_new_tokens": 4})
    prep = prepared.prepare(r, with_data=False, select=True)
    assert [g.name for g in prep.goldens] == ["math", "math_heldout"]
    prepared.evaluate_start(prep)
    saved = json.loads(json.dumps(prepared.start_to_json(prep)))
    assert prepared.start_matches(prep, saved)
    quarter = recipe.build(recipe_dict, "t.yaml", {"sweep.heldout": 0.25})
    assert not prepared.start_matches(prepared.prepare(quarter, with_data=False, select=True),
                                      saved)
    assert not prepared.start_matches(prepared.prepare(r, with_data=False), saved)


def _chats(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Answer with a number."},
                          {"role": "user", "content": f"{i} + 1?"},
                          {"role": "assistant", "content": f"{i + 1}"},
                          {"role": "user", "content": f"and {i} + 2?"},
                          {"role": "assistant", "content": f"It is {i + 2}."}]} for i in range(n)]


def test_a_golden_set_cut_from_the_data_is_no_trial_s_training_row(recipe_dict, tmp_path):
    """eval.from_train: rows of data.train held out as a golden set, named by the file's stem,
    split for selection like any objective set, and left out of every trial's rows."""
    from conftest import jsonl
    path = jsonl(tmp_path / "chats.jsonl", _chats(24))
    r = recipe.build(recipe_dict, "t.yaml", {
        "data": {"train": path, "eval_rows": 2}, "eval.from_train": {"rows": 0.25},
        "sweep.objective": "chats/rougeL"})
    prep = prepared.prepare(r, select=True)
    sets = {g.name: g for g in prep.goldens}
    assert set(sets) == {"math", "chats", "chats_heldout"}  # the objective's set is split
    assert len(sets["chats"].prompts) + len(sets["chats_heldout"].prompts) == 6
    own = sets["chats"].prompts + sets["chats_heldout"].prompts
    assert all(p[0]["role"] == "system" and p[-1] == {"role": "user", "content": p[-1]["content"]}
               and len(p) == 4 for p in own)
    assert len(prep.train_ds) == 16 and len(prep.eval_ds) == 2

    def asked(ds) -> set[str]:  # each training row's last question, from its tokens (every
        # assistant turn is trained, so the rows come tokenized and masked)
        texts = [prep.tok.decode(row["input_ids"]) for row in ds]
        return {q for t in texts for q in re.findall(r"and \d+ \+ 2\?", t)}
    held = {p[-1]["content"] for p in own}
    assert len(asked(prep.train_ds)) == 16  # every training row's question is found
    assert not held & asked(prep.train_ds) and not held & asked(prep.eval_ds)
    # a trial with another seed and other data settings loads the data again: still left out
    trial = recipe.with_values(r, {"seed": 7, "data.max_rows": 12})
    train_ds, eval_ds = prepared.datasets(prep, trial)
    assert len(train_ds) == 12 and not held & (asked(train_ds) | asked(eval_ds))


@pytest.mark.parametrize("over, needle", [
    ({"method": "dpo", "data.train": "builtin:math_preferences"}, "needs prompt/answer rows"),
    ({"eval.from_train.name": "math"}, "golden set 'math' exists already"),
    ({"eval.from_train.metrics": ["pairwise_accuracy"]}, "does not fit a generation"),
])
def test_a_golden_set_from_the_data_is_checked_before_any_work(recipe_dict, over, needle):
    from harness.core.errors import HarnessError
    r = recipe.build(recipe_dict, "t.yaml", {"eval.from_train": {"rows": 2}, **over})
    with pytest.raises(HarnessError, match=needle) as e:
        prepared.check(r)
    assert e.value.key.startswith("eval.from_train")
