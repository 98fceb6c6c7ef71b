"""A registry of trainers (sft, dpo, reward): recipe -> TRL config + trainer.

Knows nothing of Optuna or MLflow: a sweep hands it callbacks, tracking hands it `report_to`.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass, fields
from importlib.metadata import version

from harness import models
from harness.errors import HarnessError, did_you_mean
from harness.recipe import Recipe
from harness.registry import Registry


@dataclass(frozen=True)
class TrainerKind:
    name: str
    config_class: str  # "module:Class" of the TRL config dataclass the `trainer:` section fills
    trainer_class: str
    task: str = "causal-lm"  # or "seq-cls": a one-logit sequence-classification (reward) head
    data_kind: str = "supervised"  # or "preference" (harness.data.KINDS)
    lora_lr: float = 2e-4  # default learning rates, LoRA and full fine-tuning
    full_lr: float = 2e-5

    def config_cls(self):
        mod, _, cls = self.config_class.partition(":")
        return getattr(importlib.import_module(mod), cls)

    def trainer_cls(self):
        mod, _, cls = self.trainer_class.partition(":")
        return getattr(importlib.import_module(mod), cls)


TRAINERS: Registry[TrainerKind] = Registry("trainer")
TRAINERS.register("sft")(TrainerKind("sft", "trl:SFTConfig", "trl:SFTTrainer"))
# with LoRA and no ref_model, DPOTrainer's reference is the adapter-disabled base: no second copy
TRAINERS.register("dpo")(TrainerKind("dpo", "trl:DPOConfig", "trl:DPOTrainer",
                                     data_kind="preference", lora_lr=5e-5, full_lr=1e-6))
TRAINERS.register("reward")(TrainerKind("reward", "trl:RewardConfig", "trl:RewardTrainer",
                                        task="seq-cls", data_kind="preference", lora_lr=1e-4,
                                        full_lr=1e-5))

# keys the harness owns: set from other recipe sections or by the harness itself
OWNED = {"output_dir": "output_dir", "seed": "seed"}
# TrainingArguments fields that only mean something for a causal LM that generates
CAUSAL_LM_ONLY = ("neftune_noise_alpha",)


def kind(recipe: Recipe) -> TrainerKind:
    return TRAINERS.get(recipe.method, file=recipe.source, key="method")


def _fields_cache(k: TrainerKind):
    tag = f"{k.config_class}-{version('trl')}-{version('transformers')}".replace(":", "_")
    return models.cache_dir() / "fields" / f"{tag}.json"


def trainer_fields(k: TrainerKind) -> set[str]:
    """Field names of the TRL config dataclass; cached per trl/transformers version because
    importing trl takes seconds and `harness validate` must stay fast. A miss fills the cache
    for every registered trainer at once (one import of trl)."""
    cache = _fields_cache(k)
    if not cache.is_file():
        for other in TRAINERS:
            o = TRAINERS.get(other)
            names = sorted(f.name for f in fields(o.config_cls()) if f.init)
            path = _fields_cache(o)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(names))
            tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return set(json.loads(cache.read_text()))


def check_trainer_fields(recipe: Recipe) -> None:
    """Every key under `trainer:` must be a field of the method's TRL config; all bad keys at once."""
    k = kind(recipe)
    known = trainer_fields(k)
    bad = []
    for key in recipe.trainer:
        if key in OWNED:
            bad.append(f"trainer.{key}: set by the recipe's top-level {OWNED[key]!r}")
        elif k.task != "causal-lm" and key in CAUSAL_LM_ONLY:
            bad.append(f"trainer.{key}: a causal-LM option; a {k.name} model does not generate")
        elif key not in known:
            others = [o for o in TRAINERS if o != k.name and key in trainer_fields(TRAINERS.get(o))]
            if others:
                bad.append(f"trainer.{key}: an option of {', '.join(others)}, not of {k.name} "
                           f"({k.config_class.split(':')[1]})")
            else:
                bad.append(f"trainer.{key}: unknown key{did_you_mean(key, known)}")
    if k.task != "causal-lm" and recipe.eval.max_new_tokens is not None:
        bad.append(f"eval.max_new_tokens: a {k.name} model scores text and does not generate")
    if bad:
        raise HarnessError("; ".join(bad), file=recipe.source)


def build_config(recipe: Recipe, plan: models.DevicePlan, output_dir: str,
                 report_to: list[str] | None = None, has_eval: bool = False):
    """The TRL config: the harness's device-aware defaults, then the recipe's `trainer:` keys."""
    k = kind(recipe)
    defaults = dict(
        output_dir=output_dir, seed=recipe.seed, bf16=plan.bf16, fp16=plan.dtype == "float16",
        gradient_checkpointing=plan.gradient_checkpointing, report_to=report_to or "none",
        logging_steps=1, save_strategy="no", per_device_train_batch_size=8,
        learning_rate=k.lora_lr if recipe.adapter.type == "lora" else k.full_lr,
        dataloader_pin_memory=plan.device == "cuda", eval_strategy="epoch" if has_eval else "no",
        disable_tqdm=not sys.stderr.isatty(),
    )
    es = recipe.early_stopping
    if es:  # evaluate and checkpoint together, keep the best, load it back at the end
        defaults.update(eval_strategy="steps", eval_steps=es.eval_steps, save_strategy="steps",
                        save_steps=es.eval_steps, save_total_limit=2, load_best_model_at_end=True,
                        metric_for_best_model=es.metric,
                        greater_is_better=es.metric not in ("eval_loss", "loss"))
    kwargs = {**defaults, **recipe.trainer}
    try:
        return k.config_cls()(**kwargs)
    except (ValueError, TypeError) as e:
        raise HarnessError(f"invalid TRL config: {str(e).splitlines()[0]}", file=recipe.source,
                           key="trainer") from None


@dataclass
class TrainResult:
    trainer: object
    model: object  # the trained model (a PeftModel with LoRA)
    metrics: dict
    log_history: list


def train(recipe: Recipe, model, tok, train_ds, eval_ds, plan: models.DevicePlan, output_dir: str,
          callbacks: list | None = None, report_to: list[str] | None = None) -> TrainResult:
    k = kind(recipe)
    config = build_config(recipe, plan, output_dir, report_to, has_eval=eval_ds is not None)
    callbacks = list(callbacks or [])
    if recipe.early_stopping:
        from transformers import EarlyStoppingCallback
        callbacks.append(EarlyStoppingCallback(recipe.early_stopping.patience,
                                               recipe.early_stopping.threshold))
    trainer = k.trainer_cls()(
        model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tok, peft_config=models.lora_config(recipe.adapter, k.task),
        callbacks=callbacks)
    out = trainer.train()
    metrics = dict(out.metrics)
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    return TrainResult(trainer, trainer.model, metrics, list(trainer.state.log_history))


def save(result: TrainResult, path: str) -> str:
    """The adapter (or full model) and tokenizer, loadable with from_pretrained."""
    result.trainer.save_model(path)
    return path


