"""Pruning against no pruning on the same study: training steps spent and best objective.

Runs the recipe's sweep twice from scratch (fresh Optuna and MLflow stores in a temp folder,
same sampler seed, same trial count): once without a pruner, once with the median pruner on the
sweep objective over a golden-set slice. Counts training steps from each trial's logged loss.

    python bench/pruning.py recipes/sft_math.yaml --n-trials 6 [--set data.builtin_rows=48]
"""
from __future__ import annotations

import argparse
import tempfile
import time


def study(recipe_path: str, sets: list[str], n_trials: int, pruner: dict | None, root: str):
    import mlflow
    import yaml

    from harness import recipe, sweep
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
    return {"arm": arm, "steps": sum(steps.values()), "per_trial": steps, "states": states,
            "best": out["best_value"], "wall_s": round(wall)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--n-trials", type=int, default=6)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--examples", type=int, default=8)
    args = ap.parse_args()
    pruner = {"type": "median", "intermediate": "objective", "every_steps": args.every,
              "examples": args.examples, "n_startup_trials": 2}
    with tempfile.TemporaryDirectory() as root:
        rows = [study(args.recipe, args.set, args.n_trials, None, root),
                study(args.recipe, args.set, args.n_trials, pruner, root)]
    for r in rows:
        print(f"{r['arm']}: {r['steps']} training steps {r['per_trial']}, states {r['states']}, "
              f"best objective {r['best']:.4g}, {r['wall_s']} s")
    print(f"pruning saved {1 - rows[1]['steps'] / rows[0]['steps']:.0%} of the training steps; "
          f"best objective {rows[1]['best']:.4g} vs {rows[0]['best']:.4g} unpruned")


if __name__ == "__main__":
    main()
