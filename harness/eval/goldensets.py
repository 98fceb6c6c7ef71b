"""Golden sets are data: a JSONL (or Hub dataset) plus a small YAML manifest beside it."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.eval import metrics
from harness.core.errors import HarnessError
from harness.config.recipe import _error_from_validation, read_yaml
from harness.core.registry import Registry


@dataclass(frozen=True)
class Task:
    """What a golden-set task reads from its rows and what scoring hands its metrics."""
    fields: tuple[str, ...]  # the manifest keys naming the row's answer columns
    provides: frozenset[str]  # the columns harness.eval.scoring gives the metrics
    generates: bool  # the model answers each prompt; else it scores the given responses
    labels: bool = False  # takes the list of allowed answers (manifest `labels`)


#: `task:` in a manifest. A new task: its Task here and its columns in harness.evaluation.
TASKS: Registry[Task] = Registry("golden-set task")
_ANSWERS = Task(("reference_field",), frozenset(
    {"predictions", "references", "nll", "tokens", "reward_scores"}), generates=True)
TASKS.register("math")(_ANSWERS)
TASKS.register("generation")(_ANSWERS)
TASKS.register("classification")(replace(_ANSWERS, labels=True))
TASKS.register("preference")(Task(("chosen_field", "rejected_field"),
                                  frozenset({"chosen_scores", "rejected_scores"}), False))
# an lm-eval task (harness.eval.lm_eval_tasks: eval.benchmarks, not a manifest): lm-eval scores it
TASKS.register("benchmark")(Task((), frozenset({"doc_ids"}), False))


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of its metric keys.")
    description: str = ""
    task: str = Field("math", description="One of TASKS: math/generation/classification: the "
                      "model answers prompts; preference: the model scores chosen against "
                      "rejected responses.")
    source: str = Field(..., description="JSONL/CSV/Parquet beside the manifest, or a Hub id.")
    split: str = "test"
    subset: str | None = None
    prompt_field: str = "question"
    prompt_template: str | None = Field(None, description="Python format string over the row's "
                                        "fields, e.g. 'Summarize:\\n\\n{document}'; default: "
                                        "the prompt_field as is.")
    labels: list[str] | None = Field(None, description="classification: the allowed answers.")
    metric_args: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Keyword "
                                                   "arguments per metric, e.g. normalization.")
    reference_field: str = "answer"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    system_prompt: str | None = Field(None, description="None: the chat template's default.")
    metrics: list[str] = Field(..., min_length=1)
    max_new_tokens: int = Field(128, gt=0)
    offset: int = Field(0, ge=0, description="Skip the first N rows (e.g. a training slice).")
    limit: int | None = Field(None, gt=0, description="Use at most N rows.")


@dataclass
class GoldenSet:
    manifest: Manifest
    path: str  # the manifest file (a set cut from the training data: data.train)
    #: a string (the user's turn) or chat messages ending in a user turn, each rendered through
    #: the model's chat template (harness.eval.scoring.chat_prompt)
    prompts: list[str | list[dict]]
    references: list[str]  # generation sets
    chosen: list[str] | None = None  # preference sets
    rejected: list[str] | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def task(self) -> Task:
        return TASKS.get(self.manifest.task)

    @property
    def is_preference(self) -> bool:
        """The model scores given responses rather than answering."""
        return not self.task.generates


def locate(path: str) -> str:
    """The manifest file a recipe names: a path, or a shipped set (harness.config.shipped)."""
    from harness.config import shipped
    found = shipped.locate(path, "goldensets")
    if found is None:
        raise HarnessError("golden-set manifest not found", file=path)
    return found


def load_manifest(path: str) -> Manifest:
    path = locate(path)
    data = read_yaml(path, "golden-set manifest")
    try:
        m = Manifest.model_validate(data)
    except ValidationError as e:
        raise _error_from_validation(e, path, data, Manifest) from None
    task = TASKS.get(m.task, file=path, key="task")
    if m.task == "benchmark":
        raise HarnessError("task benchmark is an lm-eval task's: name it in a recipe's "
                           "eval.benchmarks, not in a manifest", file=path, key="task")
    for i, name in enumerate(m.metrics):
        metrics.check(name, file=path, key=f"metrics.{i}")
    for name in m.metric_args:
        if name not in m.metrics:
            raise HarnessError(f"arguments for {name!r}, which is not in metrics",
                               file=path, key=f"metric_args.{name}")
    if task.labels != bool(m.labels):
        raise HarnessError("labels: a classification set needs labels, and only it takes them",
                           file=path, key="labels")
    return m


def metric_args(m: Manifest, name: str) -> dict:
    """What a metric is called with beyond its inputs: the manifest's args, and the labels of a
    classification set."""
    args = dict(m.metric_args.get(name, {}))
    if m.labels and name in ("accuracy", "macro_f1"):
        args.setdefault("labels", m.labels)
    return args


def source_of(path: str, m: Manifest) -> str:
    """The manifest's source: a file beside the manifest, else as written (a Hub id)."""
    import os
    # `..` taken lexically: through a link (a checkout's goldensets/) it means the link's parent
    local = Path(os.path.normpath(Path(path).parent / m.source))
    return str(local) if local.exists() else m.source


def count_rows(path: str, m: Manifest, max_examples: int | None = None) -> int | None:
    """How many examples the set scores, without loading it: counted in a local JSONL source
    after offset, limit and max_examples; None for another source (known once loaded)."""
    source = Path(source_of(path, m))
    if source.suffix.lower() != ".jsonl" or not source.is_file():
        return None
    with source.open(encoding="utf-8") as f:
        n = max(0, sum(1 for line in f if line.strip()) - m.offset)
    return min([n] + [x for x in (m.limit, max_examples) if x])


def load(path: str, max_examples: int | None = None) -> GoldenSet:
    from harness.data import heldrows
    from harness.data.trainset import load_source
    path = locate(path)
    m = load_manifest(path)
    source = source_of(path, m)
    ds = load_source(source, m.split, m.subset, key="source")
    task = TASKS.get(m.task)
    keys = (["prompt_field"] if m.prompt_template is None else []) + list(task.fields)
    for key in keys:
        if getattr(m, key) not in ds.column_names:
            raise HarnessError(f"column {getattr(m, key)!r} not in {ds.column_names}", file=path,
                               key=key)
    if m.prompt_template is not None:
        try:
            ds = ds.map(lambda row: {"_prompt": m.prompt_template.format(**row)})
        except (KeyError, IndexError, ValueError) as e:
            raise HarnessError(f"template needs field {e} (columns: {ds.column_names})",
                               file=path, key="prompt_template") from None
    end = len(ds) if m.limit is None else min(len(ds), m.offset + m.limit)
    if max_examples:
        end = min(end, m.offset + max_examples)
    rows = ds.select(range(min(m.offset, end), end))
    if len(rows) == 0:
        raise HarnessError("no examples left after offset/limit", file=path)
    columns = {k: list(rows[getattr(m, k)]) for k in keys}
    for i, values in enumerate(zip(*columns.values()), m.offset + 1):
        for key, v in zip(keys, values):
            if key == "prompt_field" and isinstance(v, list):  # a conversation
                heldrows.check_prompt(v, source, i, getattr(m, key))
            elif not (isinstance(v, str) and v.strip()):
                raise HarnessError(f"{getattr(m, key)!r} is empty or not a string (a prompt may "
                                   "also be a list of {role, content} messages)"
                                   if key == "prompt_field" else
                                   f"{getattr(m, key)!r} is empty or not a string", file=source,
                                   row=i)
    prompts = list(rows["_prompt"]) if m.prompt_template is not None else columns["prompt_field"]
    if not task.generates:
        return GoldenSet(m, path, prompts, [], columns["chosen_field"], columns["rejected_field"])
    return GoldenSet(m, path, prompts, columns["reference_field"])


def from_train(name: str, source: str, prompts: list[list[dict]], references: list[str],
               metrics_: list[str], max_new_tokens: int) -> GoldenSet:
    """A golden set of rows held out of the training data `source` (eval.from_train,
    harness.data.heldrows): generation scored like a manifest's."""
    m = Manifest(name=name, task="generation", source=source, metrics=metrics_,
                 max_new_tokens=max_new_tokens,
                 description=f"{len(prompts)} rows held out of {source}, never trained on")
    return GoldenSet(m, source, prompts, references)


def prompt_text(prompt: str | list[dict]) -> str:
    """A prompt as one string: itself, or its messages as JSON (hashing, tables)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


HELDOUT = "_heldout"  # the held-out part of a golden set is named <name>_heldout


def split(gs: GoldenSet, share: float, seed: int) -> tuple[GoldenSet, GoldenSet]:
    """(selection part, held-out part) of `gs`: the round(share * n) examples whose seeded hash
    of prompt and answer ranks first are held out (at least one, and at least one left), so
    every process and any row order pick the same ones. Rows keep their order in each part."""
    import hashlib
    n = len(gs.prompts)
    answers = gs.references or gs.chosen
    rank = sorted(range(n), key=lambda i: (hashlib.sha256(
        f"{seed}\0{prompt_text(gs.prompts[i])}\0{answers[i]}".encode()).hexdigest(), i))
    held = set(rank[:min(n - 1, max(1, round(share * n)))])

    def part(ids: list[int], name: str) -> GoldenSet:
        pick = lambda xs: [xs[i] for i in ids] if xs else xs  # noqa: E731
        return GoldenSet(gs.manifest.model_copy(update={"name": name}), gs.path,
                         pick(gs.prompts), pick(gs.references), pick(gs.chosen),
                         pick(gs.rejected))
    return (part([i for i in range(n) if i not in held], gs.name),
            part([i for i in range(n) if i in held], gs.name + HELDOUT))
