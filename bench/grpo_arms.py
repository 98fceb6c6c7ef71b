"""GRPO arms side by side on one GPU, each from the SFT trial of a `bench/quality.py` work
folder, with what tells whether a GRPO run learned: held-out accuracy before and after (its
paired test), its mean reward in the first and last quarter of its steps, the share of groups
rewarded alike, and the one line of a run that stopped (a NaN gradient, say).

GRPO's decoding leaves an H200 mostly idle, so the arms of one question (a learning rate, the
steps, an attention kernel) share a device call: on 2026-12-04 two 180-step arms side by side
took 1.34-1.40 s a step each (TRL's `step_time`), one arm alone 1.34 s.

    python bench/quality.py --work W --steps sft --repeat-best 0          # the SFT trial, once
    python bench/grpo_arms.py --work W --arm lr5e-5 trainer.learning_rate=5e-5 \\
        --arm eager model.attn_implementation=eager [--grpo KEY=VALUE ...] [--rlhf]

Each arm is the `harness train` that bench/quality.py's grpo (or rlhf) step runs (its --grpo
settings, default bench/quality.py's, then the arm's own) on a copy of W's MLflow store, since
SQLite takes one writer at a time and model.init_from must find the SFT trial there. Logs:
W/arms/<name>.log.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

ROOT = quality.ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="a bench/quality.py folder with its sft step")
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar="NAME [K=V]",
                    help="an arm: its name, then its --set overrides (repeat for each arm)")
    ap.add_argument("--grpo", nargs="*", default=quality.GRPO_GPU, help="every arm's --set "
                    f"overrides first (default {' '.join(quality.GRPO_GPU)})")
    ap.add_argument("--grpo-prompts", default="select", metavar="select|builtin|FILE",
                    help="as bench/quality.py's")
    ap.add_argument("--rlhf", action="store_true", help="the RLHF step (W's reward model as the "
                    "reward) instead of GRPO with verifiable rewards")
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    args = ap.parse_args()
    import mlflow
    work = Path(args.work).resolve()
    state = json.loads((work / "state.json").read_text()) if (work / "state.json").exists() else {}
    step = "rlhf" if args.rlhf else "grpo"
    for needed in ["sft"] + (["reward"] if args.rlhf else []):
        if needed not in state:
            sys.exit(f"{work}: no {needed} step; run bench/quality.py --work {work} --steps "
                     f"{needed} first")
    extra = ["--set", f"model.init_from={state['sft']['run_id']}"]
    if args.rlhf:
        extra += ["--set", f"rewards.0.path={state['reward']['run_id']}"]
    # the held-out sets bench/quality.py wrote for the chain, as they are
    sets = [str(work / "goldensets" / f"{name}.yaml") for name in ("math_heldout", "prefs_heldout")]
    common = args.grpo + quality.grpo_prompts(work, args.grpo_prompts)
    (work / "arms").mkdir(exist_ok=True)
    running = {}
    for name, *overrides in args.arm:
        db = f"arms/{name}.db"
        shutil.copyfile(work / "mlflow.db", work / db)
        argv = quality.train_argv(work, step, f"{step}_math.yaml", args.model, sets,
                                  common + overrides, *extra, name=name, db=db)
        with open(work / "arms" / f"{name}.log", "w") as log:  # the child keeps its own copy
            running[name] = (subprocess.Popen([sys.executable, "-m", "harness", *argv],
                                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT),
                             time.time(), overrides)
    print("| arm | --set | before | after | delta [95% CI] | p / Holm | fixed / broken | "
          "reward first -> last quarter | groups alike | seconds |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    key = quality.OWN[step][0]
    took = {}  # each arm's wall time, from its start to its end
    while len(took) < len(running):
        for name, (proc, start, _) in running.items():
            if name not in took and proc.poll() is not None:
                took[name] = time.time() - start
        time.sleep(1)
    failed = []
    for name, (proc, _, overrides) in running.items():
        rc = proc.returncode
        said = " ".join(overrides)
        if rc:
            print(f"| {name} | {said} | failed (exit {rc}): "
                  f"{quality.error_line(work / 'arms' / f'{name}.log')} | | | | | | | "
                  f"{took[name]:.0f} |")
            failed.append(name)
            continue
        client = mlflow.MlflowClient(f"sqlite:///{work}/arms/{name}.db")
        run = quality.last_run(client, name, "train")
        f = quality.run_figures(client, run)[key]
        g = quality.grpo_signal(client, run)
        trend = ("" if g["reward_first"] is None else  # one logged step: no trend
                 f"{g['reward_first']:.3f} -> {g['reward_last']:.3f}")
        alike = "" if g["alike"] is None else f"{g['alike']:.2f}"
        changed = "" if f["fixed"] is None else f"{f['fixed']:.0f} / {f['broken']:.0f}"
        print(f"| {name} | {said} | {f['before']:.3f} | {f['after']:.3f} | {f['delta']:+.3f} "
              f"[{f['ci_low']:+.3f}, {f['ci_high']:+.3f}] | {f['p_value']:.3g} / "
              f"{f['p_holm']:.3g} | {changed} | {trend} | {alike} | {took[name]:.0f} |",
              flush=True)
    print(f"\n`{key}` on the held-out problems; every arm also ran with --set {' '.join(common)}")
    if failed:
        sys.exit(f"{len(failed)} arm(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
