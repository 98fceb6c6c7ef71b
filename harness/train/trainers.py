"""A registry of trainers (sft, dpo, reward, kto, grpo): recipe -> TRL config + trainer.

Knows nothing of Optuna or MLflow: a sweep hands it callbacks, tracking hands it `report_to`.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
from dataclasses import dataclass, field, fields
from importlib.metadata import version

from harness import models
from harness.accel import attention, graphs, kernels, memory
from harness.core import fences, stopping
from harness.train import (assistant_loss, checkpoints, distributed, guards, rewards, rollouts,
                           steps)
from harness.core.errors import HarnessError, did_you_mean
from harness.core.files import atomic_write
from harness.config.recipe import Recipe
from harness.core.registry import Registry


@dataclass(frozen=True)
class TrainerKind:
    name: str
    config_class: str  # "module:Class" of the TRL config dataclass the `trainer:` section fills
    trainer_class: str
    task: str = "causal-lm"  # or "seq-cls": a one-logit sequence-classification (reward) head
    data_kind: str = "supervised"  # or "preference" (harness.data.KINDS)
    lora_lr: float = 2e-4  # default learning rates, LoRA and full fine-tuning
    full_lr: float = 2e-5
    packs: bool = False  # takes the GPU fast path's padding-free packing
    # the trainer takes already prepared rows (SFTConfig.dataset_kwargs skip_prepare_dataset)
    reuses_prepared: bool = False
    rewarded: bool = False  # takes reward functions (GRPO): the recipe's `rewards:`
    #: the harness's defaults for this trainer's own config fields (the recipe's keys win)
    defaults: tuple = ()
    #: ... and those that replace them on a CUDA GPU
    gpu_defaults: tuple = ()

    def config_cls(self):
        return _load(self.config_class)

    def trainer_cls(self):
        return _load(self.trainer_class)


def _load(ref: str):
    """'module:Class', imported when first needed (importing trl takes seconds)."""
    import trl  # noqa: F401 - the trainers' package; named here so the import graph shows it
    mod, _, cls = ref.partition(":")
    return getattr(importlib.import_module(mod), cls)


TRAINERS: Registry[TrainerKind] = Registry("trainer")
TRAINERS.register("sft")(TrainerKind("sft", "trl:SFTConfig", "trl:SFTTrainer", packs=True,
                                     reuses_prepared=True))
# with LoRA and no ref_model, DPOTrainer's reference is the adapter-disabled base: no second copy
TRAINERS.register("dpo")(TrainerKind("dpo", "trl:DPOConfig", "trl:DPOTrainer",
                                     data_kind="preference", lora_lr=5e-5, full_lr=1e-6))
TRAINERS.register("reward")(TrainerKind("reward", "trl:RewardConfig", "trl:RewardTrainer",
                                        task="seq-cls", data_kind="preference", lora_lr=1e-4,
                                        full_lr=1e-5))
# KTO: single completions judged desirable or not; with LoRA the reference is the
# adapter-disabled base, as for DPO. Preference pairs are unpaired first (train()).
TRAINERS.register("kto")(TrainerKind("kto", "trl:KTOConfig", "trl:KTOTrainer",
                                     data_kind="unpaired", lora_lr=5e-5, full_lr=5e-7))
# GRPO: completions sampled per prompt, scored by the recipe's rewards. Completions of 128
# tokens hold a worked grade-school solution (TRL's 512 is for long reasoning) and keep a CPU
# step in minutes; 4 completions a prompt give the group its spread at half TRL's cost. A step
# samples one prompt's group on a CPU, four on a GPU: eager decoding there is bound by kernel
# launches (~40-75 ms a token whatever the batch, H200, bench/grpo_speed.py), so 16 rows decode
# for the price of 4 (16 is divisible by every num_generations of sweeps/grpo_math.yaml).
# Rollouts decode merged, and compiled on a GPU for long runs (harness.train.rollouts).
TRAINERS.register("grpo")(TrainerKind("grpo", "trl:GRPOConfig", "trl:GRPOTrainer",
                                      data_kind="prompt", lora_lr=2e-5, full_lr=1e-6,
                                      rewarded=True,
                                      gpu_defaults=(("per_device_train_batch_size", 16),),
                                      defaults=(("max_completion_length", 128),
                                                ("num_generations", 4),
                                                ("per_device_train_batch_size", 4),
                                                # TRL writes each logging step's completions
                                                # under output_dir/completions; run.py logs
                                                # them to MLflow. One printed a step, not all
                                                ("log_completions", True),
                                                ("num_completions_to_print", 1))))

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
            atomic_write(path, json.dumps(names))  # a concurrent reader never sees half a file
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
    values = recipe.trainer
    if "learning_rate" in values and not (isinstance(values["learning_rate"], (int, float))
                                          and values["learning_rate"] > 0):
        bad.append(f"trainer.learning_rate: must be a positive number, got "
                   f"{values['learning_rate']!r}")
    steps, epochs = values.get("max_steps", -1), values.get("num_train_epochs", 1)
    if not (isinstance(steps, int) and steps > 0) and not (
            isinstance(epochs, (int, float)) and epochs > 0):
        bad.append(f"trainer.num_train_epochs: must be positive (or set trainer.max_steps), got "
                   f"{values['num_train_epochs']!r}")
    for key in ("per_device_train_batch_size", "max_length"):
        if key in values and values[key] is not None and not (
                isinstance(values[key], int) and values[key] > 0):
            bad.append(f"trainer.{key}: must be a positive integer, got {values[key]!r}")
    if k.task != "causal-lm" and recipe.eval.max_new_tokens is not None:
        bad.append(f"eval.max_new_tokens: a {k.name} model scores text and does not generate")
    if bad:
        raise HarnessError("; ".join(bad), file=recipe.source)


GPU_ONLY = {"use_liger_kernel": "Liger's Triton kernels", "fp16": "fp16 mixed precision",
            "tf32": "TF32 matmuls"}


def check_device(recipe: Recipe, plan: models.DevicePlan) -> None:
    """Options that need a CUDA GPU, refused on a CPU before anything runs."""
    if plan.device != "cpu":
        return
    bad = [f"trainer.{k}: {what} needs a CUDA GPU and this machine has none"
           for k, what in GPU_ONLY.items() if recipe.trainer.get(k)]
    if recipe.model.cuda_graphs:
        bad.append("model.cuda_graphs: CUDA graphs need a CUDA GPU and this machine has none")
    if (recipe.model.attn_implementation or "").startswith("flash_attention"):
        bad.append(f"model.attn_implementation: {recipe.model.attn_implementation} needs a CUDA "
                   "GPU and this machine has none")
    if recipe.eval.decoding == "compiled":
        bad.append("eval.decoding: compiled decoding needs a CUDA GPU (transformers compiles "
                   "generation there only) and this machine has none")
    if bad:
        raise HarnessError("; ".join(bad), file=recipe.source)


def checkpointing_key(k: TrainerKind) -> str:
    """transformers 5.2x renamed gradient_checkpointing to activation_checkpointing (the old
    name warns); older releases, such as the GPU image's, know only the old one."""
    return "activation_checkpointing" if "activation_checkpointing" in trainer_fields(k) \
        else "gradient_checkpointing"


def default_field(recipe: Recipe, name: str):
    """A TRL config field's default, from the dataclass (imports trl)."""
    f = {x.name: x for x in fields(kind(recipe).config_cls())}.get(name)
    return f.default if f is not None else None


def build_config(recipe: Recipe, plan: models.DevicePlan, output_dir: str,
                 report_to: list[str] | None = None, has_eval: bool = False):
    """The TRL config: the harness's device-aware defaults, then the recipe's `trainer:` keys."""
    k = kind(recipe)
    defaults = dict(
        output_dir=output_dir, seed=recipe.seed, bf16=plan.bf16, fp16=plan.dtype == "float16",
        report_to=report_to or "none",
        logging_steps=1, save_strategy="no", per_device_train_batch_size=8,
        learning_rate=k.lora_lr if recipe.adapter.type == "lora" else k.full_lr,
        # a pin-memory thread's CUDA calls while a graph is captured make the capture fail
        dataloader_pin_memory=plan.device == "cuda" and not (plan.cuda_graphs and k.packs),
        eval_strategy="epoch" if has_eval else "no",
        disable_tqdm=not sys.stderr.isatty(), optim=plan.optim,
        dataloader_num_workers=plan.loader_workers,
        # kept across epochs: else each epoch's end joins them and the next forks them again
        # and waits for their first batch (~0.1 s an epoch on an H200, docs/benchmarks.md)
        dataloader_persistent_workers=bool(
            recipe.trainer.get("dataloader_num_workers", plan.loader_workers)),
        logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
    )
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(recipe.trainer):
        # a default for the other name would override the one the recipe sets
        defaults[checkpointing_key(k)] = plan.gradient_checkpointing
    # the memory plan's micro-batches (same effective batch), unless the recipe sets the batch
    defaults.update(memory.batch_keys(plan.micro_batch, plan.accumulation, recipe.trainer))
    if recipe.adapter.type == "lora":
        # transformers searches a PeftModel's graph for unused parameters every DDP step; every
        # LoRA weight gets a gradient, and on a GPU that host-side walk slows each step
        defaults["ddp_find_unused_parameters"] = False
    # DDP would broadcast rank 0's buffers before every forward: a collective each step that
    # holds the ranks in step. A language model's buffers are constants derived from its config
    # (rotary frequencies), equal on every rank from the load; none is trained.
    defaults["ddp_broadcast_buffers"] = False
    if k.packs:
        defaults["packing"] = plan.packing
    defaults.update(k.defaults)
    if plan.device == "cuda":
        defaults.update(k.gpu_defaults)
    if k.rewarded:
        defaults["reward_weights"] = [float(r.weight) for r in recipe.rewards]
    if saves_by_time(recipe):
        defaults["save_total_limit"] = 1  # only the last serves a resume
    es = recipe.early_stopping
    if es:  # evaluate and checkpoint together, keep the best, load it back at the end
        defaults.update(eval_strategy="steps", eval_steps=es.eval_steps, save_strategy="steps",
                        save_steps=es.eval_steps, save_total_limit=2, load_best_model_at_end=True,
                        metric_for_best_model=es.metric,
                        greater_is_better=es.metric not in ("eval_loss", "loss"))
    kwargs = {**defaults, **recipe.trainer}
    try:
        config = k.config_cls()(**kwargs)
    except (ValueError, TypeError) as e:
        raise HarnessError(f"invalid TRL config: {str(e).splitlines()[0]}", file=recipe.source,
                           key="trainer") from None
    if (plan.pad_packed and k.packs and padding_free(config) and config.max_length
            and "pad_to_multiple_of" not in recipe.trainer):
        # bins hold at most max_length tokens each, so a batch pads by less than one bin
        config.pad_to_multiple_of = config.max_length
    return config


# Config fields that steer only the optimisation or the bookkeeping, never how a trainer
# tokenizes and packs its rows. Every other field (an unknown new one too) keys the rows a
# trainer prepared, so a trial that changes one of them prepares its own.
NOT_DATA = frozenset({
    "output_dir", "logging_dir", "run_name", "report_to", "learning_rate", "num_train_epochs",
    "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
    "optim_args", "neftune_noise_alpha", "gradient_accumulation_steps",
    "per_device_train_batch_size", "per_device_eval_batch_size", "logging_steps",
    "disable_tqdm"})


class PreparedRows:
    """The tokenized (and packed) rows of the last trainer given this cache, given to the next
    one with the same data, tokenizer and preparation (TRL's `skip_prepare_dataset`): a sweep
    tokenizes and packs its data once, not once a trial. Preparing is deterministic, so the rows
    are the ones the trainer would make itself. Held by a Handover."""

    def __init__(self):
        self.held: tuple | None = None  # (train_ds, eval_ds, tok, key, prepared train, eval)

    @staticmethod
    def key(config) -> str:
        return json.dumps({k: v for k, v in config.to_dict().items() if k not in NOT_DATA},
                          sort_keys=True, default=str)

    def get(self, train_ds, eval_ds, tok, key: str):
        h = self.held
        if h and h[0] is train_ds and h[1] is eval_ds and h[2] is tok and h[3] == key:
            return h[4], h[5]
        return None

    def keep(self, train_ds, eval_ds, tok, key: str, trainer) -> None:
        self.held = (train_ds, eval_ds, tok, key, trainer.train_dataset, trainer.eval_dataset)


@dataclass
class Handover:
    """What one trainer hands the next in the same command (a sweep's trials, in their
    Prepared): the rows it prepared, and what torch's varlen kernel was found to take."""
    rows: PreparedRows = field(default_factory=PreparedRows)
    varlen: attention.VarlenKernel = field(default_factory=attention.VarlenKernel)


@dataclass
class TrainResult:
    trainer: object
    model: object  # the trained model (a PeftModel with LoRA)
    metrics: dict
    log_history: list


def train(recipe: Recipe, model, tok, train_ds, eval_ds, plan: models.DevicePlan, output_dir: str,
          callbacks: list | None = None, report_to: list[str] | None = None,
          reward_models: dict | None = None, resume_from: str | None = None,
          handover: Handover | None = None) -> TrainResult:
    """`reward_models`: GRPO's reward models as prepared resolved them (harness.train.rewards).
    `resume_from`: a checkpoint of the same run's settings to go on from
    (harness.train.checkpoints).
    `handover`: what an earlier trainer of the command left (its rows are taken where they
    fit), and where this one leaves its own for the next; default: a trainer on its own."""
    k = kind(recipe)
    config = build_config(recipe, plan, output_dir, report_to, has_eval=eval_ds is not None)
    callbacks = [*(callbacks or []), guards.stop_check()]
    timed_saves = saves_by_time(recipe)
    if timed_saves:
        callbacks.append(checkpoints.saver(recipe.checkpoint_minutes))
    if recipe.early_stopping:
        from transformers import EarlyStoppingCallback
        callbacks.append(EarlyStoppingCallback(recipe.early_stopping.patience,
                                               recipe.early_stopping.threshold))
    finite = guards.FiniteLoss()
    use_cache = model.config.use_cache
    blocked = graph_blocker(recipe, config, plan)
    source = (train_ds, eval_ds, tok, PreparedRows.key(config))  # before TRL touches config
    handover = handover or Handover()
    reuses = k.reuses_prepared and fences.allowed("prepared_rows")
    prepared = handover.rows.get(*source) if reuses else None
    if prepared:
        train_ds, eval_ds = prepared
        config.dataset_kwargs = {**(config.dataset_kwargs or {}), "skip_prepare_dataset": True}
    assistant_loss.configure(config, train_ds)  # after: rows TRL prepared need it no more
    # the plan's grouped_kv off: the varlen kernel never tried with fewer K/V heads
    varlen = handover.varlen if plan.grouped_kv else attention.VarlenKernel(grouped_kv=False)
    with attention.training_attention(model, plan.attention if k.packs and padding_free(config)
                                      else None, varlen), \
            kernels.fused_norms(model, plan.fused_norm), \
            graphs.cuda_graphs(model, blocked is None) as graphed, \
            (attention.policy_gradient_kernels(recipe.model.attn_implementation) if k.rewarded
             else contextlib.nullcontext()), \
            guards.faults(recipe, output_dir, checkpointing_key(k)) as where:
        extra = {}
        if k.rewarded:
            funcs, toks, _ = rewards.build(recipe.rewards, reward_models)
            extra = {"reward_funcs": funcs, "reward_processing_classes": toks}
        if k.data_kind == "unpaired":  # pairs become two single judgements (TRL's own way)
            train_ds, eval_ds = (unpaired(ds) for ds in (train_ds, eval_ds))
        trainer_cls = steps.lean(k.trainer_cls()) if plan.lean_steps else k.trainer_cls()
        trainer = trainer_cls(
            model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=tok, peft_config=models.lora_config(recipe.adapter, k.task),
            callbacks=callbacks + [finite.callback], **extra)
        if reuses and not prepared:
            handover.rows.keep(*source, trainer)
        where["trainer"] = trainer
        if graphed is not None:
            trainer.data_collator = graphs.StaticSequences(trainer.data_collator,
                                                           config.max_length)
        cast_adapter(trainer.model, recipe.adapter, plan)
        if plan.bucket_views:
            distributed.gradients_in_buckets(trainer)
        with (rollouts.merged(trainer.model, config, compiled_rollouts(recipe, config, plan,
                                                                     len(train_ds)),
                              enabled=plan.merged_rollouts)
              if k.rewarded else contextlib.nullcontext()) as unmerged:
            if unmerged in ("quantized base weights", "more than one adapter"):
                print(f"harness: GRPO rollouts decode through the unmerged adapter ({unmerged})",
                      file=sys.stderr)
            try:
                out = trainer.train(resume_from_checkpoint=resume_from)
            except RuntimeError as e:  # a loader worker that a stop signal reached first
                stopping.stopped_worker(e)
                raise
        if timed_saves:  # they served a resume; the adapter is saved apart (train.save)
            checkpoints.remove(output_dir)
        finite.check(recipe, config)
        metrics = dict(out.metrics)
        if plan.cuda_graphs:  # steps whose decoder stack ran as a graph, batch shapes captured
            metrics["cuda_graphs/steps"] = graphed.steps if graphed is not None else 0
            metrics["cuda_graphs/shapes"] = len(graphed.graphs) if graphed is not None else 0
        if distributed.world_size() > 1:  # every rank takes part in the check
            metrics["distributed/in_sync"] = float(distributed.weights_in_sync(trainer.model))
        if eval_ds is not None:
            metrics.update(trainer.evaluate())
    scoring_ready(trainer.model, use_cache)
    return TrainResult(trainer, trainer.model, metrics, list(trainer.state.log_history))


def saves_by_time(recipe: Recipe) -> bool:
    """Whether the harness checkpoints the run every `checkpoint_minutes`
    (harness.train.checkpoints):
    not where the recipe or early stopping set a save strategy, nor for a multi-process trial,
    whose ranks would disagree on the minute (trainer.save_steps serves those)."""
    return bool(recipe.checkpoint_minutes) and not recipe.early_stopping \
        and recipe.trainer.get("save_strategy", "no") == "no" and distributed.world_size() == 1


def compiled_rollouts(recipe: Recipe, config, plan: models.DevicePlan, prompts: int) -> bool:
    """Whether GRPO's rollouts decode compiled (harness.train.rollouts): `eval.decoding` decides as
    it
    does for golden sets, over the decoding steps of the run's rollouts (one generation every
    steps_per_generation optimizer steps, each up to max_completion_length tokens)."""
    from harness.eval import scoring
    steps = config.max_steps
    if steps <= 0:  # epochs: each prompt's group once an epoch
        per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
        steps = math.ceil(config.num_train_epochs * prompts * config.num_generations / per_step)
    every = getattr(config, "steps_per_generation", None) or config.gradient_accumulation_steps
    decoding = -(-steps // every) * config.max_completion_length
    return scoring.compiled_decoding(recipe.eval.decoding, plan.device, decoding)


def unpaired(ds):
    """Preference pairs as KTO's unpaired rows (trl.data_utils.unpair_preference_dataset);
    other rows as they are."""
    if ds is None or "chosen" not in ds.column_names:
        return ds
    from trl.data_utils import unpair_preference_dataset
    return unpair_preference_dataset(ds)


def scoring_ready(model, use_cache: bool) -> None:
    """The trained model as the base was before training, for scoring: the Trainer leaves
    `config.use_cache` at TrainingArguments.use_cache (False), and SFTTrainer's fused LM head
    (trl.trainer.utils.add_fused_lm_head) stays as an instance `forward` that, called without
    `fused_lm_head`, runs the model's own. Compiled decoding traces that wrapper as other code,
    so every tuned model would compile once more than the base; without it they share one
    compile. Only a wrapper that names the class's own forward (`__wrapped__`) is removed."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.use_cache = use_cache
    if not fences.allowed("fused_lm_head"):  # compiled decoding then compiles once more
        return
    own = base.__dict__.get("forward")
    if own is not None and getattr(getattr(own, "__func__", own), "__wrapped__", None) is \
            type(base).forward:
        del base.forward


def graph_blocker(recipe: Recipe, config, plan: models.DevicePlan) -> str | None:
    """Why this run's decoder stack cannot train through CUDA graphs (None: it will). The plan's
    default gives way with a note; a recipe that asks for them gets an error."""
    why = graphs.blocker(config, plan, recipe, kind(recipe).packs and padding_free(config))
    if why is None or why == "off":
        return why
    if recipe.model.cuda_graphs:
        raise HarnessError(f"model.cuda_graphs: true cannot be kept: {why}", file=recipe.source,
                           key="model.cuda_graphs")
    print(f"harness: CUDA graphs off ({why})", file=sys.stderr)
    return why


def cast_adapter(model, adapter, plan: models.DevicePlan) -> None:
    """LoRA weights in `adapter.dtype` (auto: the plan's). Done before train() builds the
    optimizer, as TRL does for QLoRA."""
    import torch
    dtype = plan.adapter_dtype if adapter.dtype == "auto" else adapter.dtype
    if adapter.type != "lora" or dtype == "float32":
        return
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" in name:
            param.data = param.data.to(getattr(torch, dtype))


def padding_free(config) -> bool:
    """Whether TRL will flatten each batch into one row (its own rule, SFTTrainer.__init__).
    Outside the TRL versions the rule was read from, False: no padding-free attention, bins
    or graphs, and TRL's batches go to the model's own attention, as in plain TRL."""
    packs = getattr(config, "packing", False) and config.packing_strategy in ("bfd", "bfd_split")
    return fences.allowed("padding_free_rule") and bool(getattr(config, "padding_free", False)
                                                        or packs)


def trained_tokens(result: TrainResult) -> int:
    """The tokens a run trained on: TRL's `num_tokens` at its last logged step (every step's
    under the harness's logging_steps 1)."""
    return int(next((h["num_tokens"] for h in reversed(result.log_history)
                     if "num_tokens" in h), 0))


def save(result: TrainResult, path: str) -> str:
    """The adapter (or full model) and tokenizer, loadable with from_pretrained. Written beside
    `path` and renamed into place, so a run killed mid-save never leaves half a model there."""
    import shutil
    import tempfile
    from pathlib import Path
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-")
    result.trainer.save_model(staged)
    # the pickled TrainingArguments can hold tokens (hub_token); the run's manifest has the config
    (Path(staged) / "training_args.bin").unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staged, target)
    return path


