"""The recipe's eval: section (golden sets, benchmarks, a golden set cut from data.train) and
Section, the strict base every recipe section shares (harness.config.recipe re-exports them)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: what a golden set cut from the training data scores by default: overlap with the reference
#: turn (ROUGE-L, token F1, BLEU, chrF) and the reference's perplexity under the model
FROM_TRAIN_METRICS = ("rougeL", "f1", "bleu", "chrf", "perplexity")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BenchmarkSpec(Section):
    """An lm-evaluation-harness task scored like a golden set (harness.eval.lm_eval_tasks): before
    and after, paired per document."""
    task: str = Field(..., description="lm-eval task name (gsm8k, arc_easy, hellaswag...), or "
                      "builtin:harness_math: the math golden set as an lm-eval task (offline).")
    limit: int | None = Field(None, gt=0, description="Score only the task's first N documents.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples; default: the "
                                    "task's.")
    include_path: str | None = Field(None, description="A folder of your own task YAMLs (a task "
                                     "on local files: dataset_path: json, dataset_kwargs: "
                                     "{data_files: ...}).")
    chat_template: bool = Field(True, description="Prompts through the model's chat template, "
                                "as golden sets are; false: plain text, as lm-eval's default.")
    batch_size: int | Literal["auto"] | None = Field(None, description="lm-eval's batch size; "
                                                     "default: auto (lm-eval's own choice) on a "
                                                     "GPU, eval.batch_size or 32 on a CPU.")
    every_trial: bool = Field(False, description="A sweep scores it for the start and the "
                              "chosen trial only; true: every trial too.")


class FromTrainSpec(Section):
    """A golden set cut from the training data (harness.data.heldrows): rows of data.train held
    out before training, never trained on, scored before and after like any golden set. Each
    row's prompt is its conversation up to its last assistant turn (system turn kept), its
    reference that last turn."""
    rows: int | float = Field(..., gt=0, description="Rows held out: a count (100) or a share "
                              "below 1 (0.1: a tenth), chosen by a hash seeded with the recipe "
                              "seed, apart from data.eval_rows.")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="The set's name, "
                             "the prefix of its metric keys (<name>/rougeL, usable as "
                             "sweep.objective); default: the data file's stem.")
    metrics: list[str] = Field(default_factory=lambda: list(FROM_TRAIN_METRICS), min_length=1,
                               description="Metrics of the set (the metric registry's names).")
    max_new_tokens: int = Field(256, gt=0, description="Decoding cap of each answer.")

    @field_validator("rows")
    @classmethod
    def _count_or_share(cls, v: int | float) -> int | float:
        if isinstance(v, float) and v >= 1:
            raise ValueError("a share is below 1 and a count a whole number")
        return v

    def set_name(self, train: str) -> str:
        """`name`, or the stem of data.train ('chats' for data/chats.jsonl, 'builtin_math')."""
        if self.name:
            return self.name
        stem = Path(train.rstrip("/")).name.split(".")[0] or "own"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)


class EvalSpec(Section):
    goldensets: list[str] = Field(default_factory=lambda: ["builtin:math"], description="Golden-"
                                  "set manifests, scored before and after: a path, or "
                                  "builtin:<name> for a shipped one (harness/assets/goldensets).")
    forgetting_guard: str | None = Field(
        "builtin:general_knowledge", description="A general-knowledge set scored before "
        "and after every run beside the golden sets, so catastrophic forgetting shows; null: off.")
    max_examples: int | None = Field(None, gt=0, description="Score only the first N examples.")
    batch_size: int | None = Field(None, gt=0, description="Generation batch size; default 32 "
                                   "on a CPU, 256 on a GPU.")
    max_new_tokens: int | None = Field(None, gt=0, description="Overrides the manifests' value.")
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list, description="lm-evaluation"
                                            "-harness tasks scored beside the golden sets, "
                                            "paired before/after like them.")
    decoding: Literal["auto", "eager", "compiled"] = Field(
        "auto", description="How golden sets are decoded. compiled: a static KV cache that "
        "transformers compiles into CUDA graphs (a compile once a process, then ~8x faster "
        "steps); eager: plain generate; auto: compiled on a GPU when the command decodes enough "
        "steps to win the compile back (harness.evaluation.COMPILE_BREAK_EVEN_STEPS). GRPO's "
        "rollouts follow the same choice over the run's rollout steps (harness.train.rollouts).")
    from_train: FromTrainSpec | None = Field(None, description="A golden set cut from "
                                             "data.train (rows held out, never trained on); "
                                             "null: none.")
