"""The whole sweep, end to end, on a GPU: `harness sweep` against the hand-written Optuna + TRL
loop a user would write (../shared/anchors/bench_sweep_peer.py), same model, data, trials and
golden sets, in one call.

Workload (issue 17): the first 4,000 GSM8K train rows as chat, SmolLM2-135M's shape with random
weights, LoRA r=16 on all linear layers, 1 epoch, a grid over N learning rates (N trials),
golden sets math (40, 64 new tokens) and general_knowledge (40, 16 new tokens) scored on the
base and after every trial. Each arm is one process, timed from its start to its exit, as a
user waits for it; bytecode and matplotlib's font cache are written before either arm starts
(warm_up), as any install has them after its first run.

Prints, per arm: wall, training, scoring and other seconds and the ratio to the peer. For the
harness, training is its `train` phase (trainer, data, CUDA graphs and TRL's steps) and TRL's
own train_runtime beside it (what the peer's training seconds measure); then the sweep's
per-phase table and each trial's scoring seconds. With --compiled, two more harness arms decode
compiled (eval.decoding: compiled), the first with empty compile caches and the second with the
caches the first left, and the base model's greedy outputs are compared with the eager arm's.
With --beside, one more arm writes the evaluation records beside the next trial's training steps
(DevicePlan.records_beside, off by default until this arm wins on a GPU).

    python bench/sweep_e2e.py --shared ../shared --trials 2 [--compiled] [--beside] [--rows 4000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import random_model
from train_speed import workload

from harness.core import timing

LRS = [1e-4, 2e-4, 5e-5, 3e-4, 1.5e-4, 4e-4, 7e-5, 2.5e-4]
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "harness" / "assets" / "goldensets"
SCORING = ("score_before", "score_after", "score_pruner")
PROFILE: Path | None = None  # --profile DIR: the harness arms run under cProfile, files there


def timed_process(argv: list[str], env: dict | None = None) -> tuple[float, str, str]:
    t = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    if p.returncode:
        print(p.stdout[-3000:], p.stderr[-6000:], sep="\n")
        sys.exit(f"{argv[:3]}: exit {p.returncode}")
    return wall, p.stdout, p.stderr


def warm_up() -> None:
    """What a machine's first Python run of these libraries writes once, done before either arm
    is timed: bytecode for every installed module (the GPU image ships its packages without it,
    and the first process that imports torch._dynamo compiled ~2,400 files, ~8 s) and
    matplotlib's font cache (~12 s). A user's own install has both after its first run."""
    import site
    import sysconfig
    folders = {sysconfig.get_path("purelib"), *site.getsitepackages(),
               *os.environ.get("PYTHONPATH", "").split(os.pathsep)} - {""}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    *sorted(f for f in folders if Path(f).is_dir())], capture_output=True)
    timed_process([sys.executable, "-c", "import matplotlib.font_manager"])
    print(f"warm-up (bytecode, font cache): {time.perf_counter() - t:.1f} s, not timed", flush=True)


def peer(model: str, shared: str, lrs: list[float], rows: int, root: Path) -> dict:
    root.mkdir(parents=True)
    wall, out, _ = timed_process([sys.executable, f"{shared}/anchors/bench_sweep_peer.py",
                                  "--model", model, "--goldensets", str(GOLDEN_DIR),
                                  "--rows", str(rows), "--out", str(root),
                                  "--lrs", *map(str, lrs)])
    lines = []
    for x in out.splitlines():  # its JSON lines, among the Trainer's printed dicts
        try:
            lines.append(json.loads(x))
        except ValueError:
            pass
    s = next(x for x in lines if "peer" in x)
    return {"arm": "peer", "wall_s": wall, "train_s": s["train_s"], "score_s": s["score_s"],
            "other_s": wall - s["train_s"] - s["score_s"], "own_wall_s": s["wall_s"],
            "trials": [x for x in lines if str(x.get("phase", "")).startswith(("base", "trial"))]}


#: `python -c` for `harness` with device-plan switches set (DevicePlan.SWITCHES: no recipe key)
SWITCHED = ("import dataclasses, sys; from harness import models; planned = models.device_plan; "
            "models.device_plan = lambda spec: dataclasses.replace(planned(spec), **{switches}); "
            "from harness.commands.cli import main; sys.exit(main())")


def harness(label: str, model: str, shared: str, lrs: list[float], rows: int, root: Path,
            decoding: str, env: dict | None = None, switches: dict | None = None) -> dict:
    import mlflow
    root.mkdir(parents=True)
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump({
        "n_trials": len(lrs), "sampler": "grid", "seed": 0,
        "params": {"trainer.learning_rate": {"type": "categorical", "choices": lrs}}}))
    d = workload("harness", model, shared, rows).to_dict()
    d["eval"].update(goldensets=["builtin:math"], forgetting_guard="builtin:general_knowledge",
                     decoding=decoding, max_examples=None, batch_size=None)
    d["sweep"].update(space=str(space), storage=f"sqlite:///{root}/optuna.db",
                      objective="math/numeric_accuracy")
    d["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db"}
    d.update(output_dir=str(root / "out"), reports_dir=str(root / "reports"))
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    said: list[str] = []
    prof = ["-m", "cProfile", "-o", str(PROFILE / f"{label}.prof")] if PROFILE else []
    launch = ["-c", SWITCHED.format(switches=switches)] if switches else ["-m", "harness"]
    wall, _, err = timed_process([sys.executable, *prof, *launch, "sweep", str(path)], env)
    if PROFILE:
        said += profile_lines(PROFILE / f"{label}.prof")
    said += [x for x in err.splitlines() if x.startswith("[harness]")]
    imports = sorted((x.split("|") for x in err.splitlines() if x.startswith("import time:")
                      and "cumulative" not in x), key=lambda f: -int(f[1]))
    said += [f"import {f[2].rstrip()}: {int(f[1]) / 1e6:.2f} s cumulative" for f in imports[:25]]
    said += [x for x in err.splitlines() if "Recompiling" in x or "triggered by" in x
             or x.strip().startswith("- ")][:40]
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    exp = client.get_experiment_by_name(d["name"])
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])
    sweep = next(r for r in runs if r.data.tags.get("harness.kind") == "sweep")
    trials = [r for r in runs if "harness.trial" in r.data.tags]
    times = timing.from_metrics(sweep.data.metrics)
    score = sum(times.get(k, 0.0) for k in SCORING)
    start = json.loads(Path(client.download_artifacts(sweep.info.run_id, "eval/start.json",
                                                      str(root))).read_text())
    return {"arm": label, "wall_s": wall, "train_s": times.get("train", 0.0), "score_s": score,
            "other_s": wall - times.get("train", 0.0) - score, "times": times,
            "train_runtime_s": sum(r.data.metrics.get("train_runtime", 0.0) for r in trials),
            "trial_score_s": [round(timing.from_metrics(r.data.metrics).get("score_after", 0.0),
                                    1) for r in trials],
            "trial_loss": [round(r.data.metrics.get("train_loss", 0.0), 4) for r in trials],
            "predictions": {name: [e["prediction"] for e in res["examples"]]
                            for name, res in start["before"].items()},
            "said": said}


def profile_lines(path: Path) -> list[str]:
    """The profile's heaviest calls, by cumulative and by own time."""
    import io
    import pstats
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats(70)
    stats.sort_stats("tottime").print_stats(30)
    return ["profile: " + x for x in out.getvalue().splitlines() if x.strip()]


def agreement(a: dict, b: dict) -> str:
    parts = []
    for name, preds in a["predictions"].items():
        other = b["predictions"][name]
        same = sum(x == y for x, y in zip(preds, other))
        parts.append(f"{name} {same}/{len(preds)}")
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--compiled", action="store_true", help="also decode compiled, caches cold "
                    "then warm, and compare the base's greedy outputs with the eager arm's")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--beside", action="store_true", help="one more harness arm with the "
                    "records written beside the next trial's steps (DevicePlan.records_beside)")
    ap.add_argument("--no-eager", action="store_true", help="skip the harness's default arm")
    ap.add_argument("--no-warm", action="store_true", help="--compiled: the cold arm only")
    ap.add_argument("--why", action="store_true", help="the harness arms print their slowest "
                    "imports (python -X importtime) and why torch.compile recompiled")
    ap.add_argument("--profile", metavar="DIR", help="the harness arms run under cProfile, "
                    "print their heaviest calls and leave <arm>.prof in DIR")
    args = ap.parse_args()
    global PROFILE
    PROFILE = Path(args.profile) if args.profile else None
    shared = str(Path(args.shared).resolve())
    lrs = LRS[:args.trials]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        model = random_model(f"{shared}/anchors/smollm2-135m", f"{d}/model")
        warm_up()
        arms = [] if args.no_peer else [peer(model, shared, lrs, args.rows, root / "peer")]
        why = {"PYTHONPROFILEIMPORTTIME": "1", "TORCH_LOGS": "recompiles"} if args.why else {}
        if not args.no_eager:
            arms.append(harness("harness", model, shared, lrs, args.rows, root / "harness",
                                "auto", why))
        if args.beside:
            arms.append(harness("harness_beside", model, shared, lrs, args.rows,
                                root / "beside", "auto", why, {"records_beside": True}))
        if args.compiled:
            caches = {"TORCHINDUCTOR_CACHE_DIR": f"{d}/inductor", "TRITON_CACHE_DIR": f"{d}/triton"}
            for label in ("compiled_cold",) + (() if args.no_warm else ("compiled_warm",)):
                arms.append(harness(f"harness_{label}", model, shared, lrs, args.rows,
                                    root / label, "compiled", {**caches, **why}))
    ref = arms[0]["wall_s"] if not args.no_peer else None
    print(f"\n{args.trials} trials, {args.rows} rows\n| arm | wall s | training s | scoring s "
          "| other s | training share | peer wall / arm wall |\n|---|---|---|---|---|---|---|")
    for a in arms:
        ratio = f"{ref / a['wall_s']:.2f}x" if ref else "-"
        print(f"| {a['arm']} | {a['wall_s']:.1f} | {a['train_s']:.1f} | {a['score_s']:.1f} | "
              f"{a['other_s']:.1f} | {a['train_s'] / a['wall_s']:.0%} | {ratio} |")
    for a in arms:
        if a["arm"] == "peer":
            print(f"\npeer trials: {json.dumps(a['trials'])}")
            continue
        print(f"\n{a['arm']}: TRL train_runtime {a['train_runtime_s']:.1f} s over the trials; "
              f"each trial's scoring after: {a['trial_score_s']} s; train_loss {a['trial_loss']}")
        print("| phase | seconds | share of time/total |\n|---|---|---|")
        for row in timing.rows(a["times"]):
            print("| " + " | ".join(row) + " |")
        print(*a["said"], sep="\n")
    eager = next((a for a in arms if a["arm"] == "harness"), None)
    for a in arms:
        if eager and a["arm"].startswith("harness_compiled"):
            print(f"\nbase greedy outputs, {a['arm']} = eager: {agreement(eager, a)}")
    print(json.dumps({a["arm"]: {k: round(v, 1) for k, v in a.items()
                                 if k.endswith("_s") and isinstance(v, float)} for a in arms}))


if __name__ == "__main__":
    main()
