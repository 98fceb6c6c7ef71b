"""Pruning against no pruning on the same study: training steps spent and best objective.

Runs the recipe's sweep twice from scratch (fresh Optuna and MLflow stores in a temp folder,
same sampler seed, same trial count): once without a pruner, once with the pruner given here.
Counts training steps from each trial's logged loss, and compares the two best trials on the
golden set with the harness's paired test (is the gap within noise?).

    python bench/pruning.py recipes/sft_math.yaml --n-trials 6 --pruner successive_halving \
        --intermediate eval_loss --every 3 --set data.builtin_rows=112 --set data.eval_rows=16
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def study(recipe_path: str, sets: list[str], n_trials: int, pruner: dict | None, root: str):
    import mlflow
    import yaml

    from harness.config import recipe
    from harness.study import sweep
    r = recipe.load(recipe_path, sets)
    space = yaml.safe_load(open(r.sweep.space))
    space["pruner"] = pruner or {"type": "none"}
    arm = "pruned" if pruner else "unpruned"
    with open(f"{root}/{arm}.yaml", "w") as f:
        yaml.safe_dump(space, f)
    r = recipe.with_values(r, {"sweep.space": f"{root}/{arm}.yaml",
                               "sweep.storage": f"sqlite:///{root}/{arm}-optuna.db",
                               "tracking.uri": f"sqlite:///{root}/{arm}-mlflow.db",
                               "reports_dir": f"{root}/reports", "output_dir": f"{root}/out",
                               "name": f"{r.name}-{arm}"})
    t = time.perf_counter()
    out = sweep.run_sweep(r, n_trials=n_trials)
    wall = time.perf_counter() - t
    client = mlflow.MlflowClient(r.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(r.name).experiment_id],
                              "tags.`harness.kind` = 'trial'")
    steps = {int(x.data.tags["harness.trial"]): len(client.get_metric_history(x.info.run_id,
                                                                              "loss"))
             for x in runs}
    states = {int(x.data.tags["harness.trial"]): x.data.tags.get("harness.trial_state",
                                                                  "COMPLETE") for x in runs}
    best_run = client.get_run(out.parent_run_id).data.tags["harness.best_run_id"]
    name, metric = r.sweep.objective.split("/", 1)
    with open(client.download_artifacts(best_run, f"eval/{name}_examples.json")) as f:
        table = json.load(f)
    scores = [row[table["columns"].index(f"after/{metric}")] for row in table["data"]]
    return {"arm": arm, "steps": sum(steps.values()), "per_trial": steps, "states": states,
            "best": out.best_value, "wall_s": round(wall), "scores": scores, "metric": metric}


def within_noise(unpruned: dict, pruned: dict):
    """The harness's own paired test of the two best trials over the same golden examples."""
    from harness.eval import metrics, stats
    m = metrics.load(unpruned["metric"])
    return stats.paired(m, metrics.module_and_args(unpruned["metric"])[1], unpruned["scores"],
                        pruned["scores"], {}, {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--pruner", default="median")
    ap.add_argument("--intermediate", default="objective", choices=["objective", "eval_loss"])
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--startup", type=int, default=2, help="median: n_startup_trials")
    ap.add_argument("--warmup", type=int, default=0, help="median: n_warmup_steps")
    ap.add_argument("--min-resource", type=int, default=3, help="halving: first rung, in steps")
    args = ap.parse_args()
    pruner = {"type": args.pruner, "intermediate": args.intermediate, "every_steps": args.every,
              "examples": args.examples}
    pruner.update({"n_startup_trials": args.startup, "n_warmup_steps": args.warmup}
                  if args.pruner == "median" else
                  {"min_resource": args.min_resource})
    with tempfile.TemporaryDirectory() as root:
        rows = [study(args.recipe, args.set, args.n_trials, None, root),
                study(args.recipe, args.set, args.n_trials, pruner, root)]
    for r in rows:
        print(f"{r['arm']}: {r['steps']} training steps {r['per_trial']}, states {r['states']}, "
              f"best objective {r['best']:.4g}, {r['wall_s']} s")
    d = within_noise(*rows)
    print(f"pruning saved {1 - rows[1]['steps'] / rows[0]['steps']:.0%} of the training steps and "
          f"{1 - rows[1]['wall_s'] / rows[0]['wall_s']:.0%} of the wall time; best objective "
          f"{rows[1]['best']:.4g} vs {rows[0]['best']:.4g} unpruned: delta {d.delta:+.3g} "
          f"[{d.ci_low:+.3g}, {d.ci_high:+.3g}], {d.test} p = {d.p_value:.3g}")


if __name__ == "__main__":
    main()
