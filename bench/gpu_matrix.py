"""A scenario matrix of the harness's documented features, end to end through the CLI
(`python -m harness ...` in subprocesses), for the GPU machine (it runs on a CPU too, smaller).

Each cell writes a recipe (from recipes/sft_math.yaml, dpo_math.yaml or reward_math.yaml, the
model pointed at a same-shape model with random weights built from
<shared>/anchors/smollm2-135m), runs one command with every store (MLflow and Optuna SQLite,
outputs, reports, MLflow artifacts) under a temp folder, then reads the cell's MLflow store back:
no run left RUNNING, the expected statuses, the expected metrics. One line a cell:

    PASS|FAIL|SKIP <cell> <seconds>s <short reason>

then a summary line; the exit code is 1 if any cell failed. A failed cell also prints the last
lines of its command's stderr.

    python bench/gpu_matrix.py --shared ../shared [--cells sft_train_cuda_graphs eval]
        [--jobs 4] [--keep] [--tiny | --full-shape]

On a CPU the sizes are tiny (16 rows, 4 golden examples, 8 new tokens) and the model is a
2-layer narrow variant of the SmolLM2-135M config (--full-shape keeps the real shape); on a GPU
the real shape, 128 rows, 8 golden examples. --jobs runs cells side by side (default 4 on a GPU,
1 on a CPU): the model is small and the H200 has room for several at once.

On the GPU machine ../shared does not travel: copy the config folder into the carried, ignored
.whl/ and point --shared there. The wheels (../shared/device/wheels.sh) and bitsandbytes for
qlora_train do not fit in one call's 64 MiB together unless bitsandbytes keeps only its CUDA 13
libraries (7 MB instead of 43):
    bash ../shared/device/wheels.sh && cp <slim bitsandbytes wheel> .whl/ &&
    mkdir -p .whl/shared/anchors && cp -r ../shared/anchors/smollm2-135m .whl/shared/anchors/
    run (carry .whl): T=$(mktemp -d) && python3 -m pip install -q --no-index --no-deps
        --no-compile --target "$T" .whl/*.whl && export PYTHONPATH="$T:$PWD" &&
        python3 bench/gpu_matrix.py --shared .whl/shared --jobs 8 --timeout 420 --logs $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_model, server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent  # the project root: commands run here, so the
# recipes' relative golden-set paths (and builtin:<name>) resolve as in the README
ORDER = ["sft_train_cuda_graphs", "sft_sweep_pruner_objective", "sft_sweep_pruner_eval_loss",
         "dpo_train", "reward_train", "qlora_train", "early_stopping", "eval", "processes_2",
         "sweep_processes_2", "sweep_workers_2", "sweep_shipped", "grpo_train", "sigterm_sweep"]


@dataclass
class Sizes:
    rows: int
    eval_rows: int
    batch: int
    examples: int
    new_tokens: int
    timeout_s: int


GPU_SIZES = Sizes(rows=128, eval_rows=16, batch=8, examples=8, new_tokens=32, timeout_s=480)
CPU_SIZES = Sizes(rows=16, eval_rows=8, batch=4, examples=4, new_tokens=8, timeout_s=900)


@dataclass
class Ctx:
    root: Path
    model: str
    gpu: bool
    gpus: int
    sizes: Sizes


@dataclass
class Cell:
    name: str
    base: str  # recipes/<base>.yaml
    command: str  # train, sweep, eval
    over: dict = field(default_factory=dict)  # dotted recipe keys
    sweep_pruner: dict | None = None
    processes: int = 1  # train: --processes; sweep: processes_per_trial (a torchrun group)
    workers: int = 1  # sweep --workers: a journal study, MLflow through `harness server`
    check: Callable | None = None  # (store, ctx) -> list of problems, and an info string
    needs_gpu: str | None = None  # why it is skipped without a GPU
    needs_gpus: int = 0  # GPUs it needs on a GPU machine (processes_2: 2; a CPU runs gloo)
    shipped: bool = False  # the recipe as shipped: only its stores and model are changed
    stop_at: str | None = None  # SIGTERM to the command's group once this line shows (the
    # stop_count-th time), then the same command again: the first must end "interrupted" (130),
    # the second finish the sweep
    stop_count: int = 1


# ---------------------------------------------------------------------------- recipes

def set_key(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[last] = value


def write_recipe(cell: Cell, ctx: Ctx, where: Path, uri: str) -> Path:
    s = ctx.sizes
    d = yaml.safe_load((ROOT / "recipes" / f"{cell.base}.yaml").read_text())
    name = f"gm_{cell.name}"
    d.update(name=name, output_dir=str(where / "outputs"), reports_dir=str(where / "reports"))
    over = {
        "model.name": ctx.model,
        "data.builtin_rows": s.rows,
        "trainer.per_device_train_batch_size": s.batch,
        "trainer.max_length": 256,
        "trainer.num_train_epochs": 1,
        "trainer.logging_steps": 1,
        "eval.max_examples": s.examples,
        "tracking.uri": uri,
        # several workers write the study at once: a journal file (SQLite is refused)
        "sweep.storage": f"journal:///{where}/study.log" if cell.workers > 1 else
        f"sqlite:///{where}/optuna.db",
    }
    if d["method"] == "grpo":  # its length is max_completion_length
        del over["trainer.max_length"]
    if cell.shipped:
        over = {k: over[k] for k in ("model.name", "tracking.uri", "sweep.storage")}
    elif d["method"] != "reward":  # a reward model does not generate
        over["eval.max_new_tokens"] = s.new_tokens
    if "eval_rows" in d.get("data", {}) and not cell.shipped:
        over["data.eval_rows"] = s.eval_rows
    over.update(cell.over)
    if cell.sweep_pruner is not None:
        space = {"n_trials": 2, "sampler": "grid", "seed": 0, "pruner": cell.sweep_pruner,
                 "processes_per_trial": cell.processes,
                 "params": {"trainer.learning_rate": {"type": "categorical",
                                                      "choices": [2e-4, 5e-4]}}}
        (where / "space.yaml").write_text(yaml.safe_dump(space))
        over["sweep.space"] = str(where / "space.yaml")
    for k, v in over.items():
        set_key(d, k, v)
    path = where / "recipe.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- store checks

class Store:
    """The cell's MLflow store, read back after its command."""

    def __init__(self, uri: str):
        import mlflow
        self.client = mlflow.MlflowClient(uri)
        self.runs = []
        for exp in self.client.search_experiments():
            self.runs += self.client.search_runs([exp.experiment_id],
                                                 order_by=["attributes.start_time"])

    def kind(self, kind: str) -> list:
        return [r for r in self.runs if r.data.tags.get("harness.kind") == kind]

    def history(self, run, key: str) -> list:
        return self.client.get_metric_history(run.info.run_id, key)


def fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def need_one(store: Store, kind: str, problems: list) -> object | None:
    runs = store.kind(kind)
    if len(runs) != 1:
        problems.append(f"{len(runs)} runs of kind {kind} (expected 1)")
        return None
    r = runs[0]
    if r.info.status != "FINISHED":
        problems.append(f"{kind} run {r.info.status}: {r.data.tags.get('harness.error', '')}")
    return r


def need_metrics(run, keys: list[str], problems: list, info: list) -> None:
    m = run.data.metrics
    for k in keys:
        if k not in m:
            problems.append(f"no metric {k}")
        else:
            info.append(f"{k}={fmt(m[k])}")


def check_train(metrics: list[str], graphs: str | None = None, extra: Callable | None = None):
    """graphs: 'on' (cuda_graphs/steps > 0 on a GPU), 'off' (0 or absent), None (report it)."""
    def check(store: Store, ctx: Ctx):
        problems, info = [], []
        r = need_one(store, "train", problems)
        if r is None:
            return problems, ""
        need_metrics(r, metrics, problems, info)
        steps = r.data.metrics.get("cuda_graphs/steps")
        if ctx.gpu and graphs == "on" and not (steps and steps > 0):
            problems.append(f"cuda_graphs/steps={steps} (expected > 0)")
        if ctx.gpu and graphs == "off" and steps:
            problems.append(f"cuda_graphs/steps={steps} (expected eager steps)")
        if ctx.gpu:
            info.append(f"cuda_graphs/steps={fmt(steps)}")
        if extra:
            extra(store, r, ctx, problems, info)
        return problems, ", ".join(info)
    return check


def check_sweep(intermediate_needs_eval: bool, world_size: int = 1):
    """The sweep run and its 2 trials; each grid point run once (parallel workers must split
    the grid); with `world_size` 2, every trial trained on 2 ranks that ended in sync."""
    def check(store: Store, ctx: Ctx):
        problems, info = [], []
        parent = need_one(store, "sweep", problems)
        if parent is not None:
            need_metrics(parent, ["best/math/numeric_accuracy"], problems, info)
        trials = [r for r in store.runs if "harness.trial" in r.data.tags]
        if len(trials) != 2:
            problems.append(f"{len(trials)} trial runs (expected 2)")
        states = []
        for t in trials:
            st, tag = t.info.status, t.data.tags.get("harness.trial_state")
            states.append(f"{t.data.tags['harness.trial']}:{'PRUNED' if tag == 'PRUNED' else st}")
            if not (st == "FINISHED" or (st == "KILLED" and tag == "PRUNED")):
                problems.append(f"trial {t.data.tags['harness.trial']} {st} "
                                f"{t.data.tags.get('harness.error', '')}".strip())
            n = len(store.history(t, "intermediate/value"))
            if n == 0:
                problems.append(f"trial {t.data.tags['harness.trial']}: no intermediate/value")
            if intermediate_needs_eval and not store.history(t, "eval_loss"):
                problems.append(f"trial {t.data.tags['harness.trial']}: no eval_loss")
            if st == "FINISHED" and "after/math/numeric_accuracy" not in t.data.metrics:
                problems.append(f"trial {t.data.tags['harness.trial']}: no "
                                "after/math/numeric_accuracy")
            if ctx.gpu:
                states[-1] += f"(graphs={fmt(t.data.metrics.get('cuda_graphs/steps'))}," \
                              f"reports={n})"
            else:
                states[-1] += f"(reports={n})"
        lrs = [t.data.params.get("recipe.trainer.learning_rate") for t in trials]
        if len(set(lrs)) != len(lrs):
            problems.append(f"a grid point ran twice: learning rates {lrs}")
        for t in trials if world_size > 1 else []:
            ws = t.data.params.get("distributed/world_size")
            sync = t.data.metrics.get("distributed/in_sync")
            if ws != str(world_size) or (t.info.status == "FINISHED" and sync != 1.0):
                problems.append(f"trial {t.data.tags['harness.trial']}: world_size {ws}, "
                                f"in_sync {sync}")
        info.append("trials " + " ".join(states))
        return problems, ", ".join(info)
    return check


def check_eval(store: Store, ctx: Ctx):
    problems, info = [], []
    r = need_one(store, "eval", problems)
    if r is not None:
        need_metrics(r, ["math/numeric_accuracy", "general_knowledge/contains_answer"],
                     problems, info)
    return problems, ", ".join(info)


def check_shipped_sweep(store: Store, ctx: Ctx):
    """The shipped sweep: its sweep run, every trial FINISHED, the held-out lift reported."""
    problems, info = [], []
    parent = need_one(store, "sweep", problems)
    if parent is not None:
        need_metrics(parent, ["best/math/numeric_accuracy",
                              "best_before/math_heldout/numeric_accuracy",
                              "best_after/math_heldout/numeric_accuracy"], problems, info)
    trials = store.kind("trial")
    bad = [t.info.run_name for t in trials if t.info.status != "FINISHED"]
    if not trials or bad:
        problems.append(f"{len(trials)} trials, not FINISHED: {bad}")
    info.append(f"{len(trials)} trials")
    return problems, ", ".join(info)


def check_resumed_sweep(store: Store, ctx: Ctx):
    """A sweep stopped by SIGTERM while a trial trained, then run again: the stopped trial's run
    KILLED, each grid point FINISHED once, the sweep run FINISHED."""
    problems, info = [], []
    need_one(store, "sweep", problems)
    trials = store.kind("trial")
    done = [t for t in trials if t.info.status == "FINISHED"]
    killed = [t for t in trials if t.info.status == "KILLED"]
    lrs = sorted(t.data.params.get("recipe.trainer.learning_rate") for t in done)
    if len(done) != 2 or len(set(lrs)) != 2:
        problems.append(f"FINISHED trials' learning rates {lrs} (expected 2 distinct)")
    if not killed:
        problems.append("no KILLED trial run: the signal came after training")
    resumed = [t.data.tags.get("harness.resumed_step") for t in done]
    info.append(f"{len(killed)} killed, {len(done)} finished, resumed at steps {resumed}")
    return problems, ", ".join(info)


def early_stop_extra(store, run, ctx, problems, info):
    evals = store.history(run, "eval_loss")
    if not evals:
        problems.append("no eval_loss logged during training")
    info.append(f"evals at steps {sorted({m.step for m in evals})}")
    if run.data.params.get("recipe.early_stopping.patience") != "2":
        problems.append("recipe.early_stopping.patience param is not 2")


def ddp_extra(store, run, ctx, problems, info):
    ws = run.data.params.get("distributed/world_size")
    if ws != "2":
        problems.append(f"distributed/world_size={ws} (expected 2)")
    sync = run.data.metrics.get("distributed/in_sync")
    if sync != 1.0:
        problems.append(f"distributed/in_sync={sync} (expected 1.0)")
    info.append(f"world_size={ws}, in_sync={sync}")


SFT_METRICS = ["before/math/numeric_accuracy", "after/math/numeric_accuracy",
               "after/general_knowledge/contains_answer", "train_loss"]
PREF = ["after/math_preferences/pairwise_accuracy", "after/math_preferences/score_margin"]

CELLS = {c.name: c for c in [
    Cell("sft_train_cuda_graphs", "sft_math", "train", check=check_train(SFT_METRICS, "on")),
    Cell("sft_sweep_pruner_objective", "sft_math", "sweep",
         sweep_pruner={"type": "median", "intermediate": "objective", "examples": 4,
                       "every_steps": 2, "n_startup_trials": 0},
         check=check_sweep(False)),
    Cell("sft_sweep_pruner_eval_loss", "sft_math", "sweep",
         over={"data.eval_rows": None},  # filled from the sizes
         sweep_pruner={"type": "median", "intermediate": "eval_loss", "every_steps": 2,
                       "n_startup_trials": 0},
         check=check_sweep(True)),
    Cell("dpo_train", "dpo_math", "train",
         check=check_train(PREF + ["after/math/numeric_accuracy", "train_loss"])),
    Cell("reward_train", "reward_math", "train",
         check=check_train(PREF + ["after/math/reference_reward", "train_loss"])),
    Cell("qlora_train", "sft_math", "train", over={"model.quantization": "4bit"},
         check=check_train(SFT_METRICS, "off"), needs_gpu="4-bit QLoRA needs a CUDA GPU"),
    Cell("early_stopping", "sft_math", "train",
         over={"data.eval_rows": None, "early_stopping": {"patience": 2, "eval_steps": 4},
               "trainer.num_train_epochs": 3},  # several evaluations: room to stop early
         check=check_train(SFT_METRICS + ["eval_loss"], extra=early_stop_extra)),
    Cell("eval", "sft_math", "eval", check=check_eval),
    Cell("processes_2", "sft_math", "train", processes=2,
         check=check_train(SFT_METRICS, "on", extra=ddp_extra), needs_gpus=2),
    # the whole sweep in one torchrun group of 2 ranks; rank 0's pruner stops both
    Cell("sweep_processes_2", "sft_math", "sweep", processes=2,
         sweep_pruner={"type": "median", "intermediate": "objective", "examples": 4,
                       "every_steps": 2, "n_startup_trials": 0},
         check=check_sweep(False, world_size=2), needs_gpus=2),
    # two workers, a GPU each, splitting the grid
    Cell("sweep_workers_2", "sft_math", "sweep", workers=2,
         sweep_pruner={"type": "median", "intermediate": "objective", "examples": 4,
                       "every_steps": 2, "n_startup_trials": 0},
         check=check_sweep(False), needs_gpus=2),
    # `harness sweep recipes/sft_math.yaml` as a user types it (--model: the real weights)
    Cell("sweep_shipped", "sft_math", "sweep", shipped=True, check=check_shipped_sweep),
    Cell("grpo_train", "grpo_math", "train", over={"trainer.max_steps": 8},
         check=check_train(["after/math/numeric_accuracy", "train_loss"])),
    # SIGTERM to the whole group (the harness and its loader workers) at the first logged step;
    # a checkpoint every step, so the retried trial resumes from one
    Cell("sigterm_sweep", "sft_math", "sweep", stop_at="{'loss'", stop_count=3,
         over={"checkpoint_minutes": 0.001, "trainer.dataloader_num_workers": 2},
         sweep_pruner={"type": "none"}, check=check_resumed_sweep),
]}


def resolve_over(cell: Cell, ctx: Ctx) -> Cell:
    over = dict(cell.over)
    if "data.eval_rows" in over and over["data.eval_rows"] is None:
        over["data.eval_rows"] = ctx.sizes.eval_rows
    return Cell(**{**cell.__dict__, "over": over})


# ---------------------------------------------------------------------------- running a cell

def command(cell: Cell, ctx: Ctx, where: Path, uri: str) -> list[str]:
    py = [sys.executable, "-m", "harness"]
    if cell.command == "eval":
        s = ctx.sizes
        return py + ["eval", ctx.model, "--goldenset", "goldensets/math.yaml",
                     "--name", f"gm_{cell.name}",
                     "--set", f"tracking.uri=sqlite:///{where}/mlflow.db",
                     "--set", f"reports_dir={where}/reports",
                     "--set", f"output_dir={where}/outputs",
                     "--set", f"eval.max_examples={s.examples}",
                     "--set", f"eval.max_new_tokens={s.new_tokens}"]
    recipe = write_recipe(cell, ctx, where, uri)
    if cell.command == "sweep" and cell.shipped:
        return py + ["sweep", str(recipe)]
    if cell.command == "sweep":
        return py + ["sweep", str(recipe), "--n-trials", "2", "--workers", str(cell.workers)]
    return py + ["train", str(recipe)] + (["--processes", str(cell.processes)]
                                          if cell.processes > 1 else [])


WARNING_LINE = re.compile(r"\b[A-Z]\w*Warning\b")


def unexpected_warnings(lines: list[str]) -> list[str]:
    """Lines of a Python warning that is not one the project expects. The expected ones are
    harness.cli.KNOWN_WARNINGS, kept there alone: the CLI hides them, the tests allow them."""
    from harness.commands.cli import KNOWN_WARNINGS
    return [line for line in lines if WARNING_LINE.search(line)
            and not any(re.search(message, line) for message, _ in KNOWN_WARNINGS)]


def stop_at(cmd: list[str], env: dict, where: Path, line: str, count: int,
            timeout_s: int) -> str | None:
    """The command in a process group of its own, SIGTERM to the group once `line` showed
    `count` times on its output (stdout and stderr into the cell's logs); None if it then ended
    as interrupted."""
    with open(where / "stdout.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        for out in proc.stdout:
            log.write(out)
            count -= line in out
            if count <= 0 or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGTERM)
        rest = proc.stdout.read()
        log.write(rest)
        code = proc.wait(timeout=120)
    (where / "stderr.log").write_text("")  # both streams went to stdout.log
    last = (rest.strip().splitlines() or [""])[-1]
    if code != 130 or not last.startswith("interrupted:"):
        return f"stopped: exit {code}, last line {last[:120]!r}"
    return None


def precreate_experiment(uri: str, name: str, where: Path) -> None:
    """The experiment made here with its artifacts under the cell's folder, so nothing lands in
    ./mlruns of the project root (the harness then finds it by name)."""
    import mlflow
    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(where / "artifacts").as_uri())


def run_cell(cell: Cell, ctx: Ctx) -> dict:
    where = ctx.root / cell.name
    where.mkdir(parents=True)
    uri = f"sqlite:///{where}/mlflow.db"
    t = time.perf_counter()
    served = None
    try:
        if cell.workers > 1:  # workers log through a server (its artifacts under `where`)
            port = 5200 + ORDER.index(cell.name)
            served = server(where, port)
            uri = f"http://127.0.0.1:{port}"
        else:
            precreate_experiment(uri, f"gm_{cell.name}", where)
        cmd = command(cell, ctx, where, uri)
    except (Exception, SystemExit) as e:  # a bug of this script, not of the harness
        if served:
            served.kill()
        return {"cell": cell.name, "status": "FAIL", "s": time.perf_counter() - t,
                "reason": f"set-up: {type(e).__name__}: {e}", "tail": []}
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1",
           "TRL_HARNESS_CACHE": str(ctx.root / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get(
               "PYTHONPATH", "").split(os.pathsep) if p])}
    (where / "command.txt").write_text(" ".join(cmd) + "\n")
    problems, info = [], ""
    if cell.stop_at:
        stopped = stop_at(cmd, env, where, cell.stop_at, cell.stop_count, ctx.sizes.timeout_s)
        if stopped:
            problems.append(stopped)
    with open(where / "stdout.log", "a") as out, open(where / "stderr.log", "a") as err:
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                                  timeout=ctx.sizes.timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    secs = time.perf_counter() - t
    stderr = (where / "stderr.log").read_text(errors="replace").splitlines()
    tail = stderr[-15:]
    if code != 0:
        problems.append(f"exit {code}" if code != "timeout" else
                        f"timed out after {ctx.sizes.timeout_s}s")
    warned = unexpected_warnings(stderr + (where / "stdout.log").read_text(
        errors="replace").splitlines())
    if warned:
        problems.append(f"{len(warned)} unexpected warning line(s): {warned[0][:160]}")
    try:
        store = Store(uri)
        running = [r.info.run_name for r in store.runs if r.info.status == "RUNNING"]
        if running:
            problems.append(f"runs left RUNNING: {', '.join(running)}")
        more, info = cell.check(store, ctx)
        problems += more if code == 0 else more[:1]  # an exit code says the rest
    except Exception as e:
        problems.append(f"store check: {type(e).__name__}: {e}")
    if served:
        served.terminate()
        served.wait()
    errors = [line for line in tail if line.startswith(("error:", "RuntimeError", "ValueError",
                                                        "TypeError", "AssertionError"))]
    if code != 0 and errors:
        problems.insert(1, errors[-1][:200])
    return {"cell": cell.name, "status": "FAIL" if problems else "PASS", "s": secs,
            "reason": "; ".join(problems) if problems else info, "tail": tail}


# ---------------------------------------------------------------------------- main

def tiny_config(config_dir: str, out: Path) -> str:
    """The SmolLM2-135M config folder with 2 narrow layers: the same tokenizer, template and
    architecture, fast enough for a 2-core CPU."""
    shutil.copytree(config_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2)
    cfg.pop("head_dim", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--cells", nargs="+", choices=ORDER, help="a subset (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (printed)")
    ap.add_argument("--jobs", type=int, help="cells run side by side (default: 4 on a GPU, "
                    "1 on a CPU)")
    shape = ap.add_mutually_exclusive_group()
    shape.add_argument("--tiny", action="store_true", help="a 2-layer narrow model (CPU default)")
    shape.add_argument("--full-shape", action="store_true", help="SmolLM2-135M's shape (GPU "
                       "default)")
    ap.add_argument("--timeout", type=int, help="seconds a cell (default 480 GPU, 900 CPU)")
    ap.add_argument("--model", help="this model in every cell (e.g. the real weights, "
                    "embedded:smollm2-135m-instruct) instead of random weights")
    ap.add_argument("--logs", help="write DIR/cells.tar.gz: each cell's command, recipe, stdout "
                    "and stderr")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # this process's store reads
    import logging
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import torch
    gpu = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if gpu else 0
    sizes = GPU_SIZES if gpu else CPU_SIZES
    if args.timeout:
        sizes = Sizes(**{**sizes.__dict__, "timeout_s": args.timeout})
    tiny = args.tiny or (not gpu and not args.full_shape)
    anchors = Path(args.shared).resolve() / "anchors" / "smollm2-135m"
    if not (anchors / "config.json").is_file():
        sys.exit(f"error: {anchors}/config.json not found (--shared)")
    root = Path(tempfile.mkdtemp(prefix="gpu_matrix-"))
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    shown = args.model or (f"{'tiny 2-layer' if tiny else 'SmolLM2-135M'}-shaped random "
                           "weights")
    print(f"gpu_matrix: {device} x{gpus}, model {shown}, {sizes.rows} rows, {sizes.examples} "
          f"golden examples; temp {root}", flush=True)
    t0 = time.perf_counter()
    config_dir = tiny_config(str(anchors), root / "tiny_config") if tiny else str(anchors)
    model = args.model or random_model(config_dir, str(root / "model"))
    ctx = Ctx(root, model, gpu, gpus, sizes)
    results, lock = {}, threading.Lock()

    def one(name: str) -> None:
        cell = resolve_over(CELLS[name], ctx)
        if cell.needs_gpu and not gpu:
            res = {"cell": name, "status": "SKIP", "s": 0.0, "reason": f"(cpu: {cell.needs_gpu})",
                   "tail": []}
        elif gpu and gpus < cell.needs_gpus:
            res = {"cell": name, "status": "SKIP", "s": 0.0,
                   "reason": f"({gpus} GPU{'s' * (gpus != 1)})", "tail": []}
        else:
            res = run_cell(cell, ctx)
        results[name] = res
        with lock:
            show(res)

    chosen = [c for c in ORDER if not args.cells or c in args.cells]
    with ThreadPoolExecutor(args.jobs or (4 if gpu else 1)) as pool:
        list(pool.map(one, chosen))
    wall = time.perf_counter() - t0
    print("\n| cell | result | seconds | reason |\n|---|---|---|---|")
    for name in chosen:
        r = results[name]
        print(f"| {name} | {r['status']} | {r['s']:.0f} | {r['reason']} |")
    n = {s: sum(r["status"] == s for r in results.values()) for s in ("PASS", "FAIL", "SKIP")}
    print(f"\nSUMMARY: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped "
          f"in {wall:.0f}s on {device} x{gpus}", flush=True)
    if args.logs:
        import tarfile
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        with tarfile.open(Path(args.logs) / "cells.tar.gz", "w:gz") as tar:
            for name in chosen:
                for f in ("command.txt", "recipe.yaml", "space.yaml", "stdout.log", "stderr.log"):
                    if (root / name / f).is_file():
                        tar.add(root / name / f, f"{name}/{f}")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if n["FAIL"] else 0)


def show(res: dict) -> None:
    if res["status"] == "SKIP":
        print(f"SKIP {res['cell']} {res['reason']}", flush=True)
        return
    print(f"{res['status']} {res['cell']} {res['s']:.0f}s {res['reason']}", flush=True)
    if res["status"] == "FAIL" and res["tail"]:
        print("    | " + "\n    | ".join(res["tail"]), flush=True)


if __name__ == "__main__":
    main()
