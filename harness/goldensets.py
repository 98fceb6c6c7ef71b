"""Golden sets are data: a JSONL (or Hub dataset) plus a small YAML manifest beside it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import metrics
from harness.errors import HarnessError
from harness.recipe import _error_from_validation, read_yaml


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Prefix of its metric keys.")
    description: str = ""
    task: Literal["math", "generation"] = Field("math", description="What kind of answers.")
    source: str = Field(..., description="JSONL/CSV/Parquet beside the manifest, or a Hub id.")
    split: str = "test"
    subset: str | None = None
    prompt_field: str = "question"
    reference_field: str = "answer"
    system_prompt: str | None = Field(None, description="None: the chat template's default.")
    metrics: list[str] = Field(..., min_length=1)
    max_new_tokens: int = Field(128, gt=0)
    offset: int = Field(0, ge=0, description="Skip the first N rows (e.g. a training slice).")
    limit: int | None = Field(None, gt=0, description="Use at most N rows.")


@dataclass
class GoldenSet:
    manifest: Manifest
    path: str  # the manifest file
    prompts: list[str]
    references: list[str]

    @property
    def name(self) -> str:
        return self.manifest.name


def load_manifest(path: str) -> Manifest:
    data = read_yaml(path, "golden-set manifest")
    try:
        m = Manifest.model_validate(data)
    except ValidationError as e:
        raise _error_from_validation(e, path, data, Manifest) from None
    for i, name in enumerate(m.metrics):
        metrics.check(name, file=path, key=f"metrics.{i}")
    return m


def load(path: str, max_examples: int | None = None) -> GoldenSet:
    from harness.data import load_source
    m = load_manifest(path)
    local = Path(path).parent / m.source
    source = str(local) if local.exists() else m.source
    ds = load_source(source, m.split, m.subset, key="source")
    for field in (m.prompt_field, m.reference_field):
        if field not in ds.column_names:
            raise HarnessError(f"column {field!r} not in {ds.column_names}", file=path,
                               key="prompt_field" if field == m.prompt_field else "reference_field")
    end = len(ds) if m.limit is None else min(len(ds), m.offset + m.limit)
    if max_examples:
        end = min(end, m.offset + max_examples)
    rows = ds.select(range(min(m.offset, end), end))
    if len(rows) == 0:
        raise HarnessError("no examples left after offset/limit", file=path)
    prompts, refs = rows[m.prompt_field], rows[m.reference_field]
    for i, (p, r) in enumerate(zip(prompts, refs), m.offset + 1):
        if not (isinstance(p, str) and p.strip() and isinstance(r, str) and r.strip()):
            raise HarnessError("empty prompt or reference", file=source, row=i)
    return GoldenSet(m, path, list(prompts), list(refs))
