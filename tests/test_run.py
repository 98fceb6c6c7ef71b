"""The one-run pipeline across trainers, and SFT -> DPO chaining through a real MLflow store."""
import pytest

from harness import recipe, run
from harness.tracking import Tracker


def _train(recipe_dict, **over):
    r = recipe.build(recipe_dict, "t.yaml", over)
    tracker = Tracker(r)
    prep = run.prepare(r, tracker)
    run.evaluate_start(prep)
    return run.run_one(prep, r, tracker, r.name, nested=False), tracker, prep


def test_reward_run_scores_pairs_and_reference_answers(recipe_dict, pref_goldenset):
    d = dict(recipe_dict, method="reward",
             data={"train": "builtin:math_preferences", "builtin_rows": 8},
             trainer={"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 128})
    d["eval"] = dict(d["eval"], goldensets=[pref_goldenset] + d["eval"]["goldensets"])
    d["sweep"] = dict(d["sweep"], objective="prefs/pairwise_accuracy")
    out, tracker, prep = _train(d)
    after = out.comparison["after"]
    assert set(after) == {"prefs/pairwise_accuracy", "prefs/score_margin",
                          "math/reference_reward"}
    assert 0 <= after["prefs/pairwise_accuracy"] <= 1
    ex = out.after["prefs"].examples[0]
    assert ex["pairwise_accuracy"] == float(ex["chosen_score"] > ex["rejected_score"])


def test_sft_then_dpo_chains_by_run_id(recipe_dict, pref_goldenset, tmp_path):
    import mlflow
    sft, tracker, _ = _train(recipe_dict, **{"trainer.learning_rate": 5e-3})
    client = mlflow.MlflowClient()
    assert any(a.path == "adapter" for a in client.list_artifacts(sft.run_id))

    d = dict(recipe_dict, method="dpo", name="tiny-dpo",
             data={"train": "builtin:math_preferences", "builtin_rows": 8},
             trainer={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 128})
    d["model"] = dict(d["model"], init_from=sft.run_id)
    d["eval"] = dict(d["eval"], goldensets=d["eval"]["goldensets"] + [pref_goldenset])
    dpo, tracker, prep = _train(d)
    assert prep.init_adapter  # the SFT adapter, downloaded from MLflow and merged
    run_ = client.get_run(dpo.run_id)
    assert run_.data.tags["harness.init_from"] == sft.run_id
    m = run_.data.metrics
    # "before" is the SFT model: its scores equal the SFT run's "after"; the base is kept too
    sft_after = client.get_run(sft.run_id).data.metrics
    assert m["before/math/perplexity"] == pytest.approx(sft_after["after/math/perplexity"],
                                                        rel=1e-4)
    assert m["base/math/perplexity"] == pytest.approx(sft_after["before/math/perplexity"],
                                                      rel=1e-4)
    assert m["before/math/perplexity"] != pytest.approx(m["base/math/perplexity"], rel=1e-3)
    assert "after/prefs/pairwise_accuracy" in m


def test_init_from_unknown_run_is_one_line(recipe_dict):
    from harness.errors import HarnessError
    with pytest.raises(HarnessError, match="model.init_from: no MLflow run 'deadbeef'"):
        _train(recipe_dict, **{"model.init_from": "deadbeef"})


def test_the_base_scored_inside_a_zero_adapter_gives_the_base_outputs_exactly(recipe_dict):
    """Compiled decoding scores the base inside the trials' LoRA structure: with peft's B = 0
    every adapter adds exactly 0, so the greedy outputs and the perplexity are the base's."""
    from peft import PeftModel
    r = recipe.build(recipe_dict, "t.yaml", {"eval.max_new_tokens": 12})
    prep = run.prepare(r, with_data=False)
    plain = run.evaluate(prep, run.as_trials_are(prep, prep.load_model()))
    prep.compiled = True  # a GPU's choice; generation stays eager here, the model is what differs
    wrapped = run.as_trials_are(prep, prep.load_model())
    assert isinstance(wrapped, PeftModel) and wrapped.peft_config["default"].r == r.adapter.r
    scored = run.evaluate(prep, wrapped)
    for name, res in plain.items():
        assert res.columns["predictions"] == scored[name].columns["predictions"]
        assert res.columns["nll"] == scored[name].columns["nll"]
        assert res.metrics == scored[name].metrics


def test_a_trained_adapter_is_merged_for_scoring_on_a_gpu_only(recipe_dict):
    """On a GPU the tuned model is scored with its adapter merged (one matmul a layer, not
    three); on a CPU it stays as trained, so CPU results are exactly the adapter's. The merged
    model scores as the adapter does (run here on the CPU, where fp32 rounding is tiny)."""
    import dataclasses

    import torch
    from peft import get_peft_model

    from harness import models
    r = recipe.build(recipe_dict, "t.yaml", {"eval.max_new_tokens": 12})
    prep = run.prepare(r, with_data=False)
    torch.manual_seed(1)
    tuned = get_peft_model(prep.load_model(), models.lora_config(r.adapter))
    for name, p in tuned.named_parameters():
        if "lora_B" in name:  # a trained adapter: B is no longer zero
            torch.nn.init.normal_(p, std=0.05)
    layers = [m for m in tuned.modules() if hasattr(m, "merged")]
    plain = run.evaluate(prep, tuned)
    assert models.merged_for_scoring(tuned, r.model, prep.plan) is tuned
    assert not any(m.merged for m in layers)  # CPU plan: as trained
    gpu = dataclasses.replace(prep.plan, device="cuda")
    merged = run.evaluate(prep, models.merged_for_scoring(tuned, r.model, gpu))
    assert layers and all(m.merged for m in layers)
    for name, res in plain.items():
        assert res.columns["predictions"] == merged[name].columns["predictions"]
        assert res.columns["nll"] == pytest.approx(merged[name].columns["nll"], rel=1e-4)
    bnb = r.model.model_copy(update={"quantization": "4bit"})
    fresh = get_peft_model(prep.load_model(), models.lora_config(r.adapter))
    assert not any(m.merged for m in models.merged_for_scoring(fresh, bnb, gpu).modules()
                   if hasattr(m, "merged"))


def test_compiled_decoding_is_refused_on_a_cpu(recipe_dict):
    from harness.errors import HarnessError
    r = recipe.build(recipe_dict, "t.yaml", {"eval.decoding": "compiled"})
    with pytest.raises(HarnessError, match="t.yaml: eval.decoding: compiled decoding needs a "
                                           "CUDA GPU"):
        run.prepare(r, with_data=False)
