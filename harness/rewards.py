"""Rewards for reinforcement fine-tuning (GRPO): a registry of reward functions a recipe names
under `rewards:`, each with a weight (TRL's GRPOConfig.reward_weights).

Verifiable rewards score a completion with the harness's own golden-set metrics, so what GRPO
optimizes is what the before/after measures: `math_answer` is the `numeric_accuracy` metric
against the row's reference answer, `answer_format` the `answer_format` metric (a '#### N'
line). `function` names a Python callable by its import path (`package.module:name`, never code
in YAML) with TRL's reward-function signature: `f(prompts, completions, **columns) -> list`.
"""
from __future__ import annotations

import importlib

from harness.errors import HarnessError
from harness.registry import Registry

#: reward name -> builder(spec) -> a TRL reward function (named, as TRL logs rewards/<name>)
REWARDS: Registry = Registry("reward")


def _texts(completions) -> list[str]:
    """Completion texts, whether TRL passes strings or (chat prompts) assistant turns."""
    return [c if isinstance(c, str) else "".join(m.get("content") or "" for m in c)
            for c in completions]


def _metric_reward(metric_name: str, needs_reference: bool):
    def build(spec):
        from harness import metrics
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
        return reward
    return build


REWARDS.register("math_answer")(_metric_reward("numeric_accuracy", needs_reference=True))
REWARDS.register("answer_format")(_metric_reward("answer_format", needs_reference=False))


@REWARDS.register("function")
def _function(spec):
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
    return fn


def build(specs) -> tuple[list, list[float]]:
    """(TRL reward functions, their weights) for the recipe's `rewards:` list."""
    funcs = [REWARDS.get(s.name, key="rewards")(s) for s in specs]
    return funcs, [float(s.weight) for s in specs]
