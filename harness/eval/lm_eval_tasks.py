"""Standard benchmarks (lm-evaluation-harness tasks) in the same before/after as golden sets.

A recipe's `eval.benchmarks` entry loads as a Benchmark: a GoldenSet whose prompts and
references are the task's documents, so it flows wherever golden sets flow (start scores,
trials, records, reports, `harness compare`). Scoring hands the model the harness already
loaded to lm-eval (`simple_evaluate` on an `HFLM` wrapping it: no second load) with
`log_samples`, and turns the per-document results into a SetResult: one example per document
id, each mean-aggregated metric with its per-document scores, paired like any golden set's.
The only module that imports lm_eval."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import shipped
from harness.core.files import atomic_write
from harness.core.errors import HarnessError, did_you_mean, say
from harness.eval.goldensets import GoldenSet, Manifest
from harness.config.recipe import BenchmarkSpec

TASK = "benchmark"  # the golden-set task of a Benchmark (harness.goldensets.TASKS)
BUILTIN = shipped.ROOT / "lm_eval"  # shipped task YAMLs: builtin:<task>
#: lm-eval metrics whose per-document scores are 0/1 (McNemar); other mean-aggregated ones are
#: compared by Wilcoxon
BINARY = {"acc", "acc_norm", "exact_match", "acc_mutual_info", "em", "pass@1"}


@dataclass
class Benchmark(GoldenSet):
    spec: BenchmarkSpec | None = None
    task_obj: Any = None  # the lm-eval Task, loaded once
    #: per-document metrics by their key in this set ('exact_match', or 'exact_match.<filter>'
    #: where a task has several filters) -> (lm-eval metric, filter)
    keys: dict | None = None

    def decoding(self, dtype: str) -> dict:
        """What decides the outputs besides the model (SetResult.decoding): the task's
        settings and the weights' dtype."""
        return settings(self, dtype)

    def score_with(self, model, tok, batch_size: int):
        """Scoring hands a set that has this method the model (harness.eval.scoring)."""
        return score(model, tok, self, batch_size, model.device.type)


def _builtin_dir() -> str:
    """The shipped task YAMLs with their data_files resolved (lm-eval reads paths from the
    working directory), written once into the harness cache."""
    import yaml

    from harness.models import cache_dir
    out = cache_dir() / "lm_eval_tasks"
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(BUILTIN.glob("*.yaml")):
        cfg = yaml.safe_load(src.read_text())
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        for split, rel in files.items():
            files[split] = str((src.parent / rel).resolve())
        text = yaml.safe_dump(cfg, sort_keys=False)
        dest = out / src.name
        if not dest.is_file() or dest.read_text() != text:
            atomic_write(dest, text)  # two workers may write it at once
    return str(out)


@functools.cache
def task_manager(include_path: str | None):
    """lm-eval's task index (about 4 s: it reads every task YAML it ships), with the harness's
    tasks and the recipe's include_path."""
    from lm_eval.tasks import TaskManager
    paths = [_builtin_dir()] + ([include_path] if include_path else [])
    return TaskManager(include_path=paths)


def task_name(spec: BenchmarkSpec) -> str:
    return spec.task.removeprefix(shipped.PREFIX)


def check(spec: BenchmarkSpec, source: str, key: str) -> None:
    """The task exists (a did-you-mean otherwise); `harness validate` calls it."""
    if spec.include_path and not Path(spec.include_path).expanduser().is_dir():
        raise HarnessError(f"include_path {spec.include_path!r} is no folder", file=source,
                           key=f"{key}.include_path")
    name = task_name(spec)
    if spec.task.startswith(shipped.PREFIX) and not (BUILTIN / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in BUILTIN.glob("*.yaml"))
        raise HarnessError(f"no shipped lm-eval task {name!r}{did_you_mean(name, known)} "
                           f"(shipped: {', '.join(known)})", file=source, key=f"{key}.task")
    tm = task_manager(spec.include_path)
    if name not in tm.all_tasks:
        raise HarnessError(f"unknown lm-eval task {name!r}{did_you_mean(name, tm.all_tasks)}",
                           file=source, key=f"{key}.task")


def load(spec: BenchmarkSpec, source: str, key: str) -> Benchmark:
    """The task's documents as a Benchmark (its data read now: a Hub dataset without the Hub
    fails here, in one line)."""
    from harness.data import hub
    check(spec, source, key)
    name = task_name(spec)
    hub.go_offline_if_unreachable()  # a cached or local dataset still loads; else it fails now
    try:
        tasks = task_manager(spec.include_path).load(name)["tasks"]
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds when the Hub is away
        why = hub.offline_reason()
        raise HarnessError(
            f"lm-eval task {name!r} could not load its data ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})"
            + (f"; the Hub is unreachable ({why})" if why else "") + ": point it at local "
            "files with a task YAML (dataset_path: json, dataset_kwargs: {data_files: ...}) in "
            "a folder named by include_path", file=source, key=f"{key}.task") from None
    task = tasks.get(name)
    if task is None or not hasattr(task, "eval_docs"):
        raise HarnessError(f"{name!r} is an lm-eval group: name its tasks one by one",
                           file=source, key=f"{key}.task")
    if spec.num_fewshot is not None:
        task.set_config(key="num_fewshot", value=spec.num_fewshot)
    docs = list(task.eval_docs)[:spec.limit] if spec.limit else list(task.eval_docs)
    keys = metric_keys(task)
    manifest = Manifest(name=re.sub(r"[^A-Za-z0-9_.-]", "_", name), task=TASK, source=name,
                        metrics=list(keys) or ["none"], description=f"lm-eval task {name}")
    return Benchmark(manifest, _task_file(name, spec) or name,
                     [str(task.doc_to_text(d)) for d in docs],
                     [str(task.doc_to_target(d)) for d in docs], spec=spec, task_obj=task,
                     keys=keys)


def _task_file(name: str, spec: BenchmarkSpec) -> str | None:
    """The task's YAML (what the run's manifest hashes), when lm-eval indexed one."""
    path = getattr(task_manager(spec.include_path).task_index.get(name), "yaml_path", None)
    return str(path) if path else None


def metric_keys(task) -> dict[str, tuple[str, str]]:
    """Each mean-aggregated metric under each of the task's filters, by its key in the set.
    Metrics with another aggregation (corpus BLEU, F1 over all documents) have no per-document
    pairing and are left out."""
    from lm_eval.api.metrics import mean
    metrics = [m for m, agg in task.aggregation().items() if agg is mean]
    filters = [f.name for f in getattr(task, "_filters", [])] or ["none"]
    return {(m if len(filters) == 1 else f"{m}.{f}"): (m, f) for f in filters for m in metrics}


def module(metric: str) -> str:
    """The harness metric module comparing an lm-eval metric's per-document scores."""
    return "sample_rate" if metric in BINARY else "sample_mean"


def score(model, tok, bench: Benchmark, batch_size: int, device: str):
    """`model` on the benchmark through lm-eval, as a SetResult paired by document id."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from harness.eval.scoring import SetResult
    spec = bench.spec
    size = spec.batch_size or ("auto" if device == "cuda" else batch_size)
    say(f"{bench.name}: lm-eval, {len(bench.prompts)} documents, batch size {size}")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=size)
    out = simple_evaluate(model=lm, tasks=[bench.task_obj], limit=len(bench.prompts),
                          log_samples=True, bootstrap_iters=0,
                          apply_chat_template=spec.chat_template,
                          task_manager=task_manager(spec.include_path))
    samples = out["samples"][task_name(spec)]
    by_doc: dict[int, dict] = {}
    for s in samples:
        ex = by_doc.setdefault(int(s["doc_id"]), {})
        for key, (metric, filt) in bench.keys.items():
            if s.get("filter", "none") == filt and metric in s:
                ex[key] = float(s[metric])
                ex.setdefault("prediction", _shown(s))
    ids = sorted(by_doc)
    examples = [{"prompt": bench.prompts[i], "reference": bench.references[i],
                 "prediction": by_doc[i].get("prediction", ""),
                 **{k: by_doc[i][k] for k in bench.keys}} for i in ids]
    values = {k: sum(e[k] for e in examples) / len(examples) for k in bench.keys}
    return SetResult(bench.name, values, examples, {"doc_ids": ids},
                     {k: {} for k in bench.keys},
                     settings(bench, str(getattr(model, "dtype", "")).removeprefix("torch.")),
                     {k: module(m) for k, (m, _) in bench.keys.items()})


def _shown(sample: dict) -> str:
    """What the model answered: its whole generation, or for other outputs (log-likelihoods
    of the choices) what lm-eval's filters kept."""
    resp = sample.get("resps") if isinstance(_first(sample.get("resps")), str) \
        else sample.get("filtered_resps")
    resp = _first(resp)
    return str(resp) if resp is not None else ""


def _first(x):
    while isinstance(x, (list, tuple)) and x:
        x = x[0]
    return x


def settings(bench: Benchmark, dtype: str) -> dict:
    spec, cfg = bench.spec, bench.task_obj.config
    return {"task": TASK, "dtype": dtype, "lm_eval_task": task_name(spec),
            "num_fewshot": cfg.num_fewshot,
            "chat_template": spec.chat_template,
            "generation_kwargs": dict(cfg.generation_kwargs or {}),
            "version": (cfg.metadata or {}).get("version")}
