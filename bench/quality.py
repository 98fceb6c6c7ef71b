"""Does each method move its own metric? The chain a user runs, every step through the CLI:

    sft     harness sweep recipes/sft_math.yaml (>= 4,000 built-in rows)      -> its best trial
    dpo     harness train recipes/dpo_math.yaml    from the best SFT trial
    reward  harness train recipes/reward_math.yaml (a reward model, from the base)
    grpo    harness train recipes/grpo_math.yaml   from SFT, verifiable rewards
    rlhf    harness train recipes/rlhf_math.yaml   from SFT, the reward model as its reward
    kto     harness train recipes/kto_math.yaml    from SFT
    compare harness compare <sft> <base> <dpo> <grpo> <rlhf> <kto>: every model against SFT

Each step is scored before (its starting model) and after on examples it never trained on and
no step selected on: `math_heldout`, the half of goldensets/math.yaml the SFT sweep held out of
its selection (sweep.heldout), and `prefs_heldout`, preference pairs from the built-in generator
with another seed whose prompts appear in no step's training rows. Each step's own run gives its
paired test and Holm's adjustment (across that run's metrics); the table says which metric is
the step's own. Every store lies under --work; a step already done there is not run again, so
the same command continues a chain cut by a device call's time limit. A step that fails (its
one error line is printed) does not stop the steps that do not start from it; the command then
exits non-zero after the table.

    python bench/quality.py --work /tmp/quality [--model embedded:smollm2-135m-instruct]
        [--steps sft dpo ...] [--sft-rows 4000] [--trials 2] [--repeat-best 3]
        [--grpo-prompts select|builtin|FILE] [--again STEP ...] [--tiny] [--out quality.json]

--tiny: CPU-sized (a handful of rows, steps and examples) to check the chain runs end to end.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["sft", "dpo", "reward", "grpo", "rlhf", "kto", "compare"]
#: the step's own metric(s), on which its target is read
OWN = {"sft": ["math_heldout/numeric_accuracy"],
       "dpo": ["prefs_heldout/pairwise_accuracy", "prefs_heldout/score_margin"],
       "reward": ["prefs_heldout/pairwise_accuracy"],
       "grpo": ["math_heldout/numeric_accuracy"], "rlhf": ["math_heldout/numeric_accuracy"],
       "kto": ["prefs_heldout/pairwise_accuracy", "prefs_heldout/score_margin"]}
SHOWN = OWN["dpo"] + ["math_heldout/numeric_accuracy"]  # also shown, for the preference steps
# 180 steps: at 40-60 the reward stayed flat (H200, 2026-12-04); lr unchanged since 40 steps
GRPO_GPU = ["trainer.max_steps=180", "trainer.num_generations=8",
            "trainer.per_device_train_batch_size=64", "trainer.learning_rate=5.0e-5"]


def grpo_prompts(work: Path, which: str) -> list[str]:
    """GRPO's and RLHF's prompts as --set overrides (--grpo-prompts): `select`, `builtin`, or
    a JSONL file of question/answer rows (GSM8K's, say: many more distinct problems)."""
    if which == "select":
        return [f"data.train={work}/goldensets/math_select.jsonl"]
    if which == "builtin":
        return ["data.builtin_rows=2000", "data.builtin_max_operand=50"]
    return [f"data.train={Path(which).resolve()}"]


def sizes(tiny: bool, args, work: Path) -> dict[str, list[str]]:
    """Each step's --set overrides beyond the shipped recipe (GPU sizes unless tiny)."""
    grpo_data = grpo_prompts(work, args.grpo_prompts)
    if tiny:
        few = ["data.builtin_rows=32", "trainer.max_steps=2", "eval.max_examples=8"]
        return {"sft": ["data.builtin_rows=32", "eval.max_examples=8"], "dpo": few,
                "reward": few, "kto": few,
                "grpo": ["trainer.max_steps=2", "eval.max_examples=8", *grpo_data,
                         *(args.grpo or [])],
                "rlhf": ["trainer.max_steps=2", "eval.max_examples=8", *grpo_data,
                         *(args.grpo or [])]}
    return {"sft": [f"data.builtin_rows={args.sft_rows}"],
            "dpo": ["data.builtin_rows=2000", "trainer.per_device_train_batch_size=16"],
            "reward": ["data.builtin_rows=2000", "trainer.per_device_train_batch_size=16"],
            "kto": ["data.builtin_rows=2000", "trainer.per_device_train_batch_size=16"],
            "grpo": (args.grpo or GRPO_GPU) + grpo_data,
            "rlhf": (args.grpo or GRPO_GPU) + grpo_data}


class StepFailed(Exception):
    """A step's command exited non-zero; the message is its one error line."""


def harness(work: Path, log: str, *argv: str) -> float:
    """One CLI command as a user types it (stores under work); its output in work/<log>.log."""
    t = time.perf_counter()
    with open(work / f"{log}.log", "w") as f:
        p = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=ROOT, stdout=f,
                           stderr=subprocess.STDOUT, text=True)
    took = time.perf_counter() - t
    if p.returncode:
        raise StepFailed(f"{log} failed (exit {p.returncode}) after {took:.0f} s: "
                         + error_line(work / f"{log}.log"))
    return took


def error_line(log: Path) -> str:
    """The harness's one `error:` line in a command's output (else its last line)."""
    lines = log.read_text().splitlines()
    said = [x for x in lines if x.startswith("error:")] or lines[-1:]
    return said[-1] if said else "no output"


def set_aside(state: dict, step: str) -> None:
    """Keeps a step's earlier entry as `<step>#<n>` when it has run again (--again)."""
    n = 1 + sum(k.startswith(f"{step}#") for k in state)
    state[f"{step}#{n}"] = state.pop(step)


def arm_of(key: str) -> str:
    """The step a state entry is of: `grpo#2` -> `grpo`."""
    return key.split("#")[0]


def stores(work: Path, name: str, db: str = "mlflow.db") -> list[str]:
    return ["--set", f"tracking.uri=sqlite:///{work}/{db}", "--set",
            f"output_dir={work}/outputs", "--set", f"reports_dir={work}/reports",
            "--set", f"name={name}"]


def heldout_sets(work: Path, n_pairs: int, tiny: bool) -> list[str]:
    """math_heldout (the SFT sweep's held-out half of goldensets/math.yaml) and prefs_heldout
    (generated pairs, no prompt of any step's training rows) as golden-set files."""
    from harness.eval import goldensets
    from harness.data import mathgen
    from harness.config import recipe
    gs_dir = work / "goldensets"
    gs_dir.mkdir(exist_ok=True)
    sft = recipe.build(recipe.read_yaml(ROOT / "recipes/sft_math.yaml"), "sft_math.yaml")
    math = goldensets.load(str(ROOT / "goldensets/math.yaml"))
    select, held = goldensets.split(math, sft.sweep.heldout, sft.sweep.heldout_seed)
    # GRPO's prompts: the selection half, in the held-out half's wording and never reported
    for name, part in (("math_select", select), ("math_heldout", held)):
        (gs_dir / f"{name}.jsonl").write_text("".join(
            json.dumps({"question": q, "answer": a}) + "\n"
            for q, a in zip(part.prompts, part.references)))
    manifest = yaml.safe_load((ROOT / "goldensets/math.yaml").read_text())
    manifest.update(name="math_heldout", source="math_heldout.jsonl",
                    description="The SFT sweep's held-out half of goldensets/math.yaml.")
    (gs_dir / "math_heldout.yaml").write_text(yaml.safe_dump(manifest))
    trained = set()
    for rows in (mathgen.generate_rows(8000, 1234), mathgen.generate_preference_rows(8000, 1234)):
        trained |= {r.get("question", r.get("prompt")) for r in rows}
    pairs, seen = [], set()
    for r in mathgen.generate_preference_rows(20 * n_pairs, seed=777):
        if r["prompt"] not in trained and r["prompt"] not in seen and r["chosen"] != r["rejected"]:
            seen.add(r["prompt"])
            pairs.append(r)
        if len(pairs) == n_pairs:
            break
    (gs_dir / "prefs_heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    manifest = yaml.safe_load((ROOT / "goldensets/math_preferences.yaml").read_text())
    manifest.update(name="prefs_heldout", source="prefs_heldout.jsonl", description=f"{len(pairs)}"
                    " generated pairs (seed 777) whose prompts no step trained on.")
    (gs_dir / "prefs_heldout.yaml").write_text(yaml.safe_dump(manifest))
    return [str(gs_dir / "math_heldout.yaml"), str(gs_dir / "prefs_heldout.yaml")]


def run_figures(client, run_id: str) -> dict:
    m = client.get_run(run_id).data.metrics
    keys = {k.split("/", 1)[1] for k in m if k.startswith("p_value/")}
    return {k: {side: m.get(f"{side}/{k}") for side in ("before", "after", "delta", "ci_low",
                                                         "ci_high", "p_value", "p_holm", "fixed",
                                                         "broken")}
            for k in sorted(keys)}


def train_argv(work: Path, step: str, recipe: str, model: str, sets: list[str],
               overrides: list[str], *extra: str, name: str | None = None,
               db: str = "mlflow.db") -> list[str]:
    """`harness train` of a chain step: its recipe from `model`, scored on the held-out `sets`,
    `overrides` and `extra` as --set / other flags; `name` its experiment (default the step)."""
    return ["train", f"recipes/{recipe}", "--set", f"model.name={model}",
            *stores(work, name or step, db), "--set", f"eval.goldensets=[{', '.join(sets)}]",
            "--set", f"sweep.objective={OWN[step][0]}",
            *[x for s in overrides for x in ("--set", s)], *extra]


def grpo_signal(client, run_id: str) -> dict:
    """What a GRPO run learned from: the share of groups rewarded alike (no advantage) over its
    logged steps, and its mean reward in the first and last quarter of them."""
    alike = [m.value for m in client.get_metric_history(run_id, "frac_reward_zero_std")]
    reward = [m.value for m in sorted(client.get_metric_history(run_id, "reward"),
                                      key=lambda m: m.step)]
    k = max(1, len(reward) // 4)
    return {"steps": len(alike), "alike": sum(alike) / len(alike) if alike else None,
            "quarter": k, "reward_first": sum(reward[:k]) / k if len(reward) >= 2 else None,
            "reward_last": sum(reward[-k:]) / k if len(reward) >= 2 else None}


def last_run(client, experiment: str, kind: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`harness.kind` = '{kind}' and "
                              "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="every store; a step done here is skipped")
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=STEPS)
    ap.add_argument("--sft-rows", type=int, default=4000)
    ap.add_argument("--trials", type=int, default=2, help="SFT sweep trials")
    ap.add_argument("--repeat-best", type=int, default=3, help="the SFT sweep's best values "
                    "trained again with this many more seeds (sweep.repeat_best): the seed spread")
    ap.add_argument("--pairs", type=int, default=300, help="held-out preference pairs")
    ap.add_argument("--grpo", nargs="*", help="GRPO's and RLHF's --set overrides (default "
                    f"{' '.join(GRPO_GPU)}; with --tiny, none but its own)")
    ap.add_argument("--grpo-prompts", default="select", metavar="select|builtin|FILE",
                    help="GRPO's and RLHF's prompts: `select`, the 85 problems of goldensets/math "
                    "the SFT sweep selected on (the held-out half's wording; never reported), "
                    "`builtin`, 2,000 rows of builtin:math with operands up to 50. On an H200 "
                    "(2026-12-04) builtin prompts moved held-out accuracy by +0.000 twice "
                    "(operands up to 20, then 50): the SFT model solves the generator's problems "
                    "and 50-88%% of the groups were rewarded alike; or a JSONL file of "
                    "question/answer rows (data.train)")
    ap.add_argument("--again", nargs="+", default=[], choices=STEPS[1:], metavar="STEP",
                    help="run these steps again though done (another arm: other --grpo "
                    "settings); the earlier run stays in the table as <step>#<n>")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    import mlflow
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    sets = heldout_sets(work, 8 if args.tiny else args.pairs, args.tiny)
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    size = sizes(args.tiny, args, work)
    model = ["--set", f"model.name={args.model}"]
    over = lambda step: [x for s in size[step] for x in ("--set", s)]  # noqa: E731

    failed = {}  # a step that failed does not stop the chain: the steps not needing it go on

    def step_done(step: str, entry_of, *argv: str) -> None:
        """Runs `harness *argv` for `step` unless done (or not asked for); records its state
        entry (`entry_of(seconds)`) or its failure."""
        if (step in state and step not in args.again) or step not in args.steps:
            return
        try:
            took = harness(work, step, *argv)
        except StepFailed as e:
            failed[step] = str(e)
            print(e, flush=True)
            return
        if step in state:  # --again: the earlier arm stays, as <step>#<n>
            set_aside(state, step)
        state[step] = entry_of(took)
        state_file.write_text(json.dumps(state, indent=1))
        print(f"{step}: run {state[step]['run_id']} in {took:.0f} s", flush=True)

    def train(step: str, recipe: str, *extra: str) -> None:
        step_done(step, lambda took: {"run_id": last_run(client, step, "train"),
                                      "seconds": round(took, 1), "set": size[step]},
                  *train_argv(work, step, recipe, args.model, sets, size[step], *extra))

    if "sft" not in state and "sft" in args.steps:  # every other step starts from it
        try:
            took = harness(work, "sft", "sweep", "recipes/sft_math.yaml", *model,
                           *stores(work, "sft"), "--set",
                           f"sweep.storage=sqlite:///{work}/optuna.db",
                           "--n-trials", str(args.trials), *over("sft"),
                           *(["--repeat-best", str(args.repeat_best)] if args.repeat_best else []))
        except StepFailed as e:
            sys.exit(str(e))
        sweep = last_run(client, "sft", "sweep")
        best = client.get_run(sweep).data.tags["harness.best_run_id"]
        state["sft"] = {"run_id": best, "sweep_run_id": sweep, "seconds": round(took, 1)}
        state_file.write_text(json.dumps(state, indent=1))
        print(f"sft: sweep {sweep}, best trial {best} in {took:.0f} s", flush=True)
    sft = state["sft"]["run_id"]
    init = ("--set", f"model.init_from={sft}")
    train("dpo", "dpo_math.yaml", *init)
    train("reward", "reward_math.yaml")
    train("grpo", "grpo_math.yaml", *init)
    if "reward" in state:
        train("rlhf", "rlhf_math.yaml", *init, "--set",
              f"rewards.0.path={state['reward']['run_id']}")
    train("kto", "kto_math.yaml", *init)
    refs = [sft, args.model] + [state[s]["run_id"] for s in ("dpo", "grpo", "rlhf", "kto")
                                if s in state]
    step_done("compare", lambda took: {"run_id": last_run(client, "chain", "compare"),
                                       "seconds": round(took, 1),
                                       "report": str(work / "reports/chain/report.md")},
              "compare", *refs, "--goldenset", sets[0], "--goldenset", sets[1],
              *stores(work, "chain"), *(["--set", "eval.max_examples=8"] if args.tiny else []))

    print("\n| step | metric | before | after | delta [95% CI] | p | Holm p | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    table = {}
    # each step, and the earlier arms of a step run --again (`<step>#<n>`)
    done = sorted((k for k in state if arm_of(k) in OWN),
                  key=lambda k: (STEPS.index(arm_of(k)), k))
    for step in done:
        base = arm_of(step)
        figs = run_figures(client, state[step]["run_id"])
        table[step] = figs
        for key in OWN[base] + [k for k in SHOWN if k not in OWN[base] and base in ("dpo", "kto")]:
            f = figs.get(key)
            if not f or f["p_value"] is None:
                continue
            mark = " (own)" if key in OWN[base] else ""
            print(f"| {step} | `{key}`{mark} | {f['before']:.3f} | {f['after']:.3f} | "
                  f"{f['delta']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}] | "
                  f"{f['p_value']:.3g} | {f['p_holm']:.3g} | {state[step]['seconds']} |")
    for step, line in failed.items():
        print(f"| {step} | failed: {line} |")
    for step in done:  # how many groups gave GRPO an advantage to learn from
        if arm_of(step) in ("grpo", "rlhf"):
            g = grpo_signal(client, state[step]["run_id"])
            if g["alike"] is not None:
                print(f"{step}: groups rewarded alike (no advantage), mean over {g['steps']} "
                      f"logged steps: {g['alike']:.2f}")
            if g["reward_first"] is not None:  # all alike because all right, or all wrong?
                print(f"{step}: mean reward, first {g['quarter']} logged steps "
                      f"{g['reward_first']:.3f}, last {g['quarter']} {g['reward_last']:.3f}")
    if "sft" in state:  # the seed spread of the SFT sweep's best values (sweep.repeat_best)
        sweep = client.get_run(state["sft"]["sweep_run_id"]).data
        for key, value in sorted(sweep.metrics.items()):
            if key.startswith("seeds/"):
                print(f"sft {key}: {value:.4g}")
        if "harness.lead_inside_seed_noise" in sweep.tags:
            print(f"sft: best trial's lead inside seed noise: "
                  f"{sweep.tags['harness.lead_inside_seed_noise']}")
    if "compare" in state:
        print(f"\ncompare: run {state['compare']['run_id']}, report {state['compare']['report']}"
              f" ({state['compare']['seconds']} s)")
    for step in done:  # what each step and arm ran with, beyond the shipped recipe
        if state[step].get("set"):
            print(f"{step}: --set {' '.join(state[step]['set'])}")
    if args.out:
        Path(args.out).write_text(json.dumps({"state": state, "figures": table,
                                              "failed": failed}, indent=1))
    if failed:
        sys.exit(f"{len(failed)} step(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
