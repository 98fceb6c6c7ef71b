"""Recipes are data: one pydantic schema, YAML loading, `--set` overrides, errors that name the key.

Knows nothing of torch, transformers, trl, mlflow or optuna, so `harness validate` and `--help`
stay fast. The TRL config section (`trainer:`) is checked against the TRL dataclass by
harness.train.check_trainer_fields, which the pipeline calls right after load().
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from harness.core.errors import HarnessError, did_you_mean
from harness.config.yamlfiles import YAMLTooLarge, safe_load
# the eval: sections and the strict base of every section, re-exported: callers import them here
from harness.config.evalspec import (BenchmarkSpec, EvalSpec, FromTrainSpec,  # noqa: F401
                                     Section)

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class ModelSpec(Section):
    name: str = Field(EMBEDDED_MODEL, description="Hub id, local path, or embedded:<name>.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on a GPU that supports it.")
    trust_remote_code: bool = Field(False, description="Run model code from the Hub repo.")
    attn_implementation: str | None = Field(None, description="eager, sdpa, flash_attention_2... "
                                               "Unset: sdpa, and GRPO trains with SDPA's math "
                                               "kernel (fused kernels gave NaN gradients); "
                                               "`sdpa` keeps torch's choice.")
    fused_norm: bool | None = Field(None, description="Train with PyTorch's fused RMSNorm kernel "
                                    "in place of the model's (Llama, Mistral, Qwen2/3). Default: "
                                    "on a GPU, where a small model's step is bound by kernel "
                                    "launches.")
    cuda_graphs: bool | None = Field(None, description="Train the model's decoder stack through "
                                     "CUDA graphs (forward and backward each replayed as one "
                                     "launch) when batches are padding-free packed. Default: on a "
                                     "GPU.")
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA (bitsandbytes NF4, double quantization, bf16 compute); "
        "needs a CUDA GPU.")
    init_from: str | None = Field(
        None, description="Start from an earlier result: an MLflow run id (a train run, a sweep "
        "or its best trial) or a path to an adapter or model folder. It is merged into the base "
        "and becomes the 'before' side; the base is still reported.")


class AdapterSpec(Section):
    type: Literal["lora", "none"] = Field("lora", description="lora, or none for full fine-tuning.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int | None = Field(None, gt=0, description="LoRA alpha (scale = alpha / r). Unset: 2 x "
                              "r, a scale of 2 at every rank, so a swept r does not change the "
                              "effective learning rate (rsLoRA's alpha / sqrt(r) still would).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str | list[str] = Field("all-linear", description="Modules LoRA wraps.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the LoRA weights. auto: the model's dtype on a GPU (no casts "
        "around every adapter; TRL does the same for QLoRA and ZeRO-3), float32 on a CPU. "
        "float32: peft's default upcast.")


class DataSpec(Section):
    train: str = Field("builtin:math", description="builtin:math, a local JSONL/CSV/Parquet file "
                       "or directory, or a Hub dataset id.")
    split: str = Field("train", description="Split to read from a Hub or directory dataset.")
    subset: str | None = Field(None, description="Hub dataset config name (e.g. 'main').")
    format: Literal["auto", "messages", "conversations", "instruction", "prompt_completion",
                    "question_answer", "text"] = Field(
        "auto", description="Row format; auto detects from columns.")
    train_turns: Literal["all", "last"] = Field(
        "all", description="A messages/conversations row trains every assistant turn (all; "
        "system, user and tool turns are context), or only its last (last).")
    max_rows: int | None = Field(None, gt=0, description="Use the first N rows (after shuffling).")
    eval_rows: int = Field(0, ge=0, description="Hold out N rows for eval loss.")
    skip_rows: int = Field(0, ge=0, description="Drop the first N rows (keep a held-out slice).")
    shuffle: bool = Field(True, description="Shuffle rows with the recipe seed before slicing.")
    builtin_rows: int = Field(256, gt=0, description="Rows the builtin:math generator makes.")
    builtin_seed: int = Field(1234, description="Seed of the builtin:math generator.")
    builtin_max_operand: int = Field(20, ge=2, description="Largest operand builtin:math uses.")


class SweepSpec(Section):
    space: str | None = Field(None, description="Sweep file (space, sampler, trials): a path, or "
                              "builtin:<name> for a shipped one (harness/assets/sweeps).")
    objective: str = Field("math/numeric_accuracy", description="What to optimize, after "
                           "training: a golden-set metric <goldenset>/<metric>, or eval_loss "
                           "(the trainer's loss on data.eval_rows).")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: inferred (harness.eval.objective): eval_loss and "
        "perplexity minimize, other metrics maximize.")
    study_name: str | None = Field(None, description="Optuna study name; default: recipe name.")
    storage: str | None = Field(None, description="Optuna storage URL: sqlite:///optuna.db "
                                "(default), journal:///path/study.log, postgresql://...")
    heldout: float = Field(0.5, ge=0, lt=1, description="Share of the objective's golden set "
                           "held out from selection: the objective and the pruner see the rest; "
                           "the report gives the best trial's before/after on this part (set "
                           "<name>_heldout). 0: no split. `harness train` never splits.")
    heldout_seed: int = Field(0, description="Seed of the hash that picks the held-out examples.")
    repeat_best: int = Field(0, ge=0, description="Train the best trial's values again with "
                             "this many more seeds: the held-out metric's mean and 95% interval "
                             "across seeds, and whether the best's lead is inside seed noise.")
    heldout_scoring: Literal["chosen", "all"] = Field(
        "chosen", description="Which tuned models score the held-out part: chosen (the start and "
        "the best trial, once the study has chosen it; no trial's selection can read it, and "
        "the report reads only the chosen one's) or all (every trial too: its after/ metrics "
        "in each trial run, at the cost of decoding it once a trial).")


class TrackingSpec(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI "
                            "or sqlite:///mlflow.db.")
    experiment: str | None = Field(None, description="MLflow experiment; default: recipe name.")
    log_models: Literal["all", "best", "none"] | None = Field(
        None, description="Trained models kept as MLflow LoggedModels (the UI's Models view; "
        "`harness export`, `--register` and `init_from` read them): all (every run and sweep "
        "trial; the default for LoRA adapters), best (a sweep's best trial and `harness train`'s "
        "run; the default for full fine-tunes, whose weights are large), none (models stay in "
        "output_dir only).")
    log_evaluations: Literal["all", "best", "none"] = Field(
        "best", description="Per-example before/after as MLflow GenAI evaluation results "
        "(the records mlflow.genai.evaluate writes, one assessment per metric, written in bulk: "
        "the UI's Evaluation runs view, comparable run against run; each side an evaluation run "
        "<name>/before, <name>/after): best (`harness train`'s and `harness eval`'s runs, a "
        "sweep's start and best trial), all (every sweep trial too; ~10 ms an example and side "
        "on a SQLite store), none.")


class ParamSpace(Section):
    """One searched recipe key: float/int ranges (log for learning rates) or categorical."""
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="Sample on a log scale (float/int).")
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type} needs low <= high")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class PrunerSpec(Section):
    """Stops unpromising trials early on an intermediate objective reported during training."""
    type: Literal["none", "median", "hyperband", "successive_halving"] = "none"
    every_steps: int = Field(4, gt=0, description="Report the intermediate objective every N "
                             "training steps.")
    intermediate: Literal["objective", "eval_loss"] = Field(
        "objective", description="objective: the sweep's golden-set metric on the first "
        "`examples` examples; eval_loss: the trainer's loss on data.eval_rows.")
    examples: int = Field(8, gt=0, description="Golden-set examples scored at each report.")
    n_startup_trials: int = Field(1, ge=0, description="median: trials finished before pruning.")
    n_warmup_steps: int = Field(0, ge=0, description="median: steps before a trial can be pruned.")
    min_resource: int = Field(1, gt=0, description="hyperband / successive_halving: "
                              "training steps before the first rung.")
    reduction_factor: int = Field(3, ge=2, description="hyperband / successive_halving.")


class SweepFile(Section):
    """A file under sweeps/: what to search and how long."""
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    n_trials: int = Field(3, gt=0, description="Trials to finish (a resumed study counts the "
                          "ones already complete).")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting trials after this.")
    sampler: Literal["gp", "tpe", "random", "grid"] = Field(
        "gp", description="gp (Gaussian process), tpe: random draws for half of n_trials (at "
        "least 4, at most 10), then the model; random; grid (categorical params only).")
    seed: int = 0
    heartbeat_s: int = Field(30, gt=0, description="Trials beat this often while they run.")
    grace_s: int = Field(90, gt=0, description="A trial silent this long is failed (its process "
                         "died) and retried once by the next start.")
    params: dict[str, ParamSpace] = Field(..., min_length=1, description="Recipe key path -> "
                                          "space, e.g. trainer.learning_rate.")
    processes_per_trial: int = Field(1, gt=0, description="Data-parallel processes (one GPU "
                                     "each) a trial trains on, under torchrun; with --workers N, "
                                     "N such groups run trials side by side.")


class RewardSpec(Section):
    """One reward of a GRPO run (harness.train.rewards): its score of each completion, weighted."""
    name: str = Field(..., description="From the reward registry: math_answer (the final number "
                      "equals the row's answer), answer_format (a '#### N' line), reward_model "
                      "(a reward run's model, named by `path`), function (a Python callable "
                      "named by `path`).")
    weight: float = Field(1.0, description="Its weight in the total reward "
                          "(GRPOConfig.reward_weights).")
    path: str | None = Field(None, description="reward_model: an MLflow run id of a `reward` "
                             "recipe (or a LoggedModel id, or a model or adapter folder); "
                             "function: `package.module:name`, imported (never code in YAML).")


class EarlyStoppingSpec(Section):
    """Stop a run when eval loss on data.eval_rows has not improved for `patience`
    evaluations; the best checkpoint is loaded back at the end (transformers'
    EarlyStoppingCallback with load_best_model_at_end)."""
    patience: int = Field(3, gt=0, description="Evaluations without improvement before stopping.")
    threshold: float = Field(0.0, ge=0, description="Least improvement that counts.")
    eval_steps: int = Field(10, gt=0, description="Evaluate (and checkpoint) every N steps.")
    metric: str = Field("eval_loss", description="Trainer metric to watch (lower is better for "
                        "eval_loss; others are taken as higher-is-better).")


class Recipe(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Names the study, "
                      "experiment and report folder.")
    method: str = Field("sft", description="Trainer from the registry: sft, dpo, reward, kto, grpo.")
    seed: int = 42
    model: ModelSpec = Field(default_factory=ModelSpec)
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    trainer: dict[str, Any] = Field(default_factory=dict, description="Fields of the TRL config "
                                    "of the method (SFTConfig...), passed through.")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    rewards: list[RewardSpec] = Field(default_factory=list, description="method grpo: the "
                                      "rewards of each completion, summed with their weights.")
    early_stopping: EarlyStoppingSpec | None = Field(None, description="Early stopping on "
                                                     "held-out eval loss; needs data.eval_rows.")
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    output_dir: str = Field("outputs", description="Where checkpoints and adapters go.")
    checkpoint_minutes: float = Field(10.0, ge=0, description="A run saves the Trainer's "
                                      "checkpoint after every this many minutes of training, and "
                                      "a killed sweep trial resumes from its last one; 0: never "
                                      "(trainer.save_strategy, when set, decides instead).")
    reports_dir: str = Field("reports", description="Where markdown reports go.")

    @field_validator("trainer")
    @classmethod
    def _string_keys(cls, v: dict) -> dict:
        for k in v:
            if not isinstance(k, str):
                raise ValueError(f"keys must be strings, got {k!r}")
        return v

    # where the recipe came from, so later checks (trainer fields, data rows) can name the file
    _source: str = "<recipe>"

    @property
    def source(self) -> str:
        return self._source

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _rewards_only_for_grpo(self):
        if self.method == "grpo" and not self.rewards:
            raise ValueError("method grpo needs rewards: e.g. [{name: math_answer}]")
        if self.method != "grpo" and self.rewards:
            raise ValueError(f"rewards are for method grpo, not {self.method}")
        return self

    @model_validator(mode="after")
    def _early_stopping_needs_eval_rows(self):
        if self.early_stopping and not self.data.eval_rows:
            raise ValueError("early_stopping needs held-out rows: set data.eval_rows")
        return self

    @property
    def all_goldensets(self) -> list[str]:
        from harness.config import shipped
        guard = self.eval.forgetting_guard
        listed = guard and any(shipped.same(guard, g, "goldensets") for g in self.eval.goldensets)
        return self.eval.goldensets + ([guard] if guard and not listed else [])

    @property
    def models_logged(self) -> str:
        """tracking.log_models with its default: all for adapters, best for full weights."""
        return self.tracking.log_models or ("best" if self.adapter.type == "none" else "all")

    def fingerprint(self) -> str:
        """Short hash of the resolved recipe: equal recipes, equal runs (tagged on every run)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- loading and overrides

def _error_from_validation(exc: ValidationError, file: str, data: dict,
                           schema: type[BaseModel] | None = None) -> HarnessError:
    """Every schema error in one message, each naming its YAML key path."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            parent = _model_at(schema or Recipe, loc[:-1])
            fields = parent.model_fields if parent else {}
            lines.append(f"{key}: unknown key{did_you_mean(loc[-1], fields)}")
        else:
            got = _value_at(data, loc)
            shown = f" (got {got!r})" if got is not _MISSING and not isinstance(
                got, (dict, list)) else ""
            msg = err["msg"].removeprefix("Value error, ")
            msg = msg[0].lower() + msg[1:]
            lines.append(f"{key}: {msg}{shown}" if key else msg)
    # one line for one error; several are joined so every mistake shows in one message
    return HarnessError("; ".join(lines), file=file)


_MISSING = object()


def _value_at(data: Any, loc: list[str]) -> Any:
    for p in loc:
        if isinstance(data, dict) and p in data:
            data = data[p]
        elif isinstance(data, list) and p.isdigit() and int(p) < len(data):
            data = data[int(p)]
        else:
            return _MISSING
    return data


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    for p in loc:
        field = model.model_fields.get(p)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def map_strings(value: Any, fn) -> Any:
    """`fn` applied to every string in nested dicts and lists (the values, not the keys)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return value


def parse_value(text: str) -> Any:
    """A --set value is YAML: 3e-4, true, [8, 16], null all mean what they say."""
    try:
        return safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, dotted: str, value: Any, file: str = "--set") -> None:
    """Set data[a][b]... = value for 'a.b...'; intermediate mappings are created. A number
    indexes a list that is there ('rewards.1.weight')."""
    parts = dotted.split(".")
    if not all(parts):
        raise HarnessError(f"bad key path {dotted!r}", file=file)
    node = data
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not (p.isdigit() and int(p) < len(node)):
                raise HarnessError(f"{'.'.join(parts[:i])} has {len(node)} items, no {p!r}",
                                   file=file, key=dotted)
            if last:
                node[int(p)] = value
                return
            node = node[int(p)]
            continue
        if last:
            node[p] = value
            return
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, (dict, list)):
            raise HarnessError(f"{'.'.join(parts[:i + 1])} is not a mapping", file=file, key=dotted)
        node = nxt


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    out = {}
    for s in sets or []:
        key, eq, value = s.partition("=")
        if not eq or not key.strip():
            raise HarnessError(f"expected KEY=VALUE, got {s!r}", file="--set")
        out[key.strip()] = parse_value(value)
    return out


def read_yaml(path: str | Path, what: str = "recipe") -> dict:
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"{what} file not found", file=str(path))
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark from an editor is fine
    except UnicodeDecodeError as e:
        raise HarnessError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                           f"save the {what} as UTF-8", file=str(path)) from None
    try:
        data = safe_load(text)
    except YAMLTooLarge as e:
        raise HarnessError(f"YAML refused: {e.problem}", file=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise HarnessError(f"malformed YAML{at}: {problem}", file=str(path)) from None
    if not isinstance(data, dict):
        raise HarnessError(f"the {what} must be a mapping of keys, got {type(data).__name__}",
                           file=str(path))
    return data


def build(data: dict, source: str = "<recipe>", overrides: dict[str, Any] | None = None) -> Recipe:
    data = copy.deepcopy(data)
    for k, v in (overrides or {}).items():
        apply_override(data, k, v)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise _error_from_validation(e, source, data) from None
    recipe._source = source
    return recipe


def load_sweep_file(path: str | Path, recipe: Recipe) -> SweepFile:
    """A sweep file (a path or a shipped one, harness.config.shipped), with each searched key
    checked by applying its first value to the recipe."""
    from harness.config import shipped
    with_file = shipped.locate(str(path), "sweeps")
    if with_file is None:
        raise HarnessError("sweep file not found", file=str(path))
    data = read_yaml(with_file, "sweep file")
    try:
        space = SweepFile.model_validate(data)
    except ValidationError as e:
        raise _error_from_validation(e, str(path), data, SweepFile) from None
    for key, p in space.params.items():
        try:
            with_values(recipe, {key: p.choices[0] if p.choices else p.low})
        except HarnessError as e:
            raise HarnessError(f"searched key does not fit the recipe: {e.message}",
                               file=str(path), key=f"params.{key}") from None
    return space


def load(path: str | Path, sets: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raises HarnessError naming the file and key."""
    return build(read_yaml(path), str(path), parse_sets(sets))


def with_values(recipe: Recipe, values: dict[str, Any]) -> Recipe:
    """The recipe with dotted-key values applied (a trial's parameters), validated again."""
    return build(recipe.to_dict(), recipe.source, values)
