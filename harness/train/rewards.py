"""Rewards for reinforcement fine-tuning (GRPO): a registry of reward functions a recipe names
under `rewards:`, each with a weight (TRL's GRPOConfig.reward_weights).

Verifiable rewards score a completion with the harness's own golden-set metrics, so what GRPO
optimizes is what the before/after measures: `math_answer` is the `numeric_accuracy` metric
against the row's reference answer, `answer_format` the `answer_format` metric (a '#### N'
line). `function` names a Python callable by its import path (`package.module:name`, never code
in YAML) with TRL's reward-function signature: `f(prompts, completions, **columns) -> list`.
`reward_model` scores completions with a model a `reward` recipe trained (its adapter merged into
its base, a one-logit sequence classifier, as TRL takes it): the RLHF chain, reward run -> GRPO.
"""
from __future__ import annotations

import importlib

from harness.core.errors import HarnessError
from harness.core.registry import Registry

#: reward name -> builder(spec, found) -> (a TRL reward function or model, its tokenizer or None);
#: `found`: what harness.pipeline.prepared resolved for it (a reward model's base and adapter
#: folders)
REWARDS: Registry = Registry("reward")


def _texts(completions) -> list[str]:
    """Completion texts, whether TRL passes strings or (chat prompts) assistant turns."""
    return [c if isinstance(c, str) else "".join(m.get("content") or "" for m in c)
            for c in completions]


def _metric_reward(metric_name: str, needs_reference: bool):
    def build(spec, found=None):
        from harness.eval import metrics
        metric = metrics.load(metric_name)

        def reward(prompts, completions, answer=None, **_):
            texts = _texts(completions)
            if needs_reference and answer is None:
                raise HarnessError(f"reward {spec.name} needs a reference answer: rows with "
                                   "question/answer (or prompt/answer) columns",
                                   key="rewards")
            refs = answer if answer is not None else [""] * len(texts)
            return metric.score_examples(predictions=texts, references=[str(r) for r in refs])
        reward.__name__ = spec.name
        return reward, None
    return build


REWARDS.register("math_answer")(_metric_reward("numeric_accuracy", needs_reference=True))
REWARDS.register("answer_format")(_metric_reward("answer_format", needs_reference=False))


@REWARDS.register("function")
def _function(spec, found=None):
    """A user's reward function: `path: package.module:name`, imported, never evaluated."""
    module, _, name = (spec.path or "").partition(":")
    if not module or not name:
        raise HarnessError(f"reward function needs path: package.module:name, got {spec.path!r}",
                           key="rewards")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise HarnessError(f"reward function {spec.path!r} cannot be imported: {e}",
                           key="rewards") from None
    if not callable(fn):
        raise HarnessError(f"reward function {spec.path!r} is not callable", key="rewards")
    return fn, None


@REWARDS.register("reward_model")
def _reward_model(spec, found):
    """`found`: (base model folder, adapter folder or None, device plan), from prepared."""
    from harness import models
    from harness.config.recipe import ModelSpec
    base, adapter, plan = found
    where = ModelSpec(name=base)
    model = models.load_model(where, plan, base, task="seq-cls", adapter=adapter)
    model.eval().requires_grad_(False)
    return model, models.load_tokenizer(where, base)


def build(specs, found: dict | None = None) -> tuple[list, list, list[float]]:
    """(reward functions or models, their tokenizers or None, weights) for `rewards:`; `found`:
    index -> what prepared resolved for that reward (reward models)."""
    built = [REWARDS.get(s.name, key=f"rewards.{i}.name")(s, (found or {}).get(i))
             for i, s in enumerate(specs)]
    return [b[0] for b in built], [b[1] for b in built], [float(s.weight) for s in specs]
