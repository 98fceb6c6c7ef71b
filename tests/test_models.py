"""harness.models: LoRA's alpha follows the rank unless the recipe sets it, so a swept rank keeps
the adapter's scale (alpha / r) where peft applies it."""
import pytest

from harness import models
from harness.config import recipe
from harness.pipeline import run


def _scales(tiny_model_dir: str, adapter) -> set[float]:
    """The scale peft applies in every LoRA layer of the tiny model with this adapter."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           models.lora_config(adapter))
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    return {s for m in layers for s in m.scaling.values()}


@pytest.mark.parametrize("rank", [4, 8, 32])
def test_alpha_is_twice_the_rank_so_the_scale_stays_two(tiny_model_dir, rank):
    base = recipe.build({"name": "x"})
    assert base.adapter.alpha is None  # the recipe says nothing: alpha follows r
    swept = recipe.with_values(base, {"adapter.r": rank})  # what a trial of a rank sweep gets
    assert models.lora_alpha(swept.adapter) == 2 * rank
    assert models.lora_config(swept.adapter).lora_alpha == 2 * rank
    assert _scales(tiny_model_dir, swept.adapter) == {2.0}


def test_an_explicit_alpha_wins_and_the_scale_then_moves_with_the_rank(tiny_model_dir):
    fixed = recipe.build({"name": "x", "adapter": {"r": 16, "alpha": 32}})
    swept = recipe.with_values(fixed, {"adapter.r": 8})
    assert swept.adapter.alpha == 32 and models.lora_alpha(swept.adapter) == 32
    assert _scales(tiny_model_dir, swept.adapter) == {4.0}


def test_run_params_show_the_alpha_trained_with_and_the_recipe_keeps_it_unset():
    r = recipe.with_values(recipe.build({"name": "x"}), {"adapter.r": 8})
    assert run.recipe_params(r)["adapter"]["alpha"] == 16
    assert r.to_dict()["adapter"]["alpha"] is None  # recipe.yaml: a rerun's alpha follows r
    full = recipe.build({"name": "x", "adapter": {"type": "none"}})
    assert run.recipe_params(full)["adapter"]["alpha"] is None  # no LoRA, no alpha
