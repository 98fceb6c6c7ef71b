import dataclasses
import pytest

from harness.data import trainset
from harness import models
from harness.config import recipe
from harness.train import steps, trainers


def _train(recipe_dict, tmp_path, name: str, lean: bool):
    r = recipe.build(recipe_dict, "test.yaml", {"trainer.max_steps": 3})
    plan = dataclasses.replace(models.device_plan(r.model), lean_steps=lean)
    k = trainers.kind(r)
    tr, ev, _ = trainset.load_train(r.data, r.seed, k.data_kind)
    model = models.load_model(r.model, plan, task=k.task)
    return trainers.train(r, model, models.load_tokenizer(r.model), tr, ev, plan,
                       str(tmp_path / name))


@pytest.mark.slow
def test_flops_are_trainers_own_with_the_parameters_counted_once(recipe_dict, tmp_path,
                                                                 monkeypatch):
    """The device plan's lean_steps on (the harness) and off (a benchmark's baseline)."""
    import trl
    from transformers import PreTrainedModel
    counted = []
    own = PreTrainedModel.num_parameters

    def counting(self, *a, **kw):
        counted.append(kw.get("exclude_embeddings"))
        return own(self, *a, **kw)
    monkeypatch.setattr(PreTrainedModel, "num_parameters", counting)
    flops = {}
    for lean in (True, False):
        counted.clear()
        res = _train(recipe_dict, tmp_path, str(lean), lean)
        trainer = res.trainer
        assert isinstance(trainer, trl.SFTTrainer) and type(trainer).__name__ == "SFTTrainer"
        assert isinstance(trainer, steps.LeanSteps) == lean
        assert trainer.state.global_step == 3
        # Trainer counts the parameters every step; the harness once a run
        assert counted.count(True) == (1 if lean else 3)
        n = res.model.num_parameters(exclude_embeddings=True)
        tokens = trainer.state.total_flos / (6 * n)  # 6 x tokens x parameters, summed
        assert tokens == int(tokens) and tokens > 0
        flops[lean] = trainer.state.total_flos
    assert flops[True] == flops[False]
