"""`harness train --processes 2`: real DDP through torchrun, gloo on the CPU, tiny model."""
import subprocess
import sys

import pytest


def test_two_processes_train_together_and_rank_0_alone_logs(recipe_dict, write_recipe):
    import mlflow
    d = dict(recipe_dict, trainer=dict(recipe_dict["trainer"], max_steps=3,
                                       per_device_train_batch_size=2))
    proc = subprocess.run([sys.executable, "-m", "harness", "train", write_recipe(d),
                           "--processes", "2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 only
    run = runs[0]
    assert run.data.params["distributed/world_size"] == "2"
    assert run.data.params["distributed/effective_batch_size"] == "4"
    assert run.data.metrics["distributed/in_sync"] == 1.0  # the same weights on both ranks
    assert "after/math/numeric_accuracy" in run.data.metrics  # scored once, by rank 0
    assert proc.stderr.count("[harness] run ") == 1  # one summary, from rank 0


def test_processes_below_one_is_bad_input(recipe_dict, write_recipe, capsys):
    from harness import cli
    assert cli.main(["train", write_recipe(recipe_dict), "--processes", "0"]) == 2
    assert "--processes: --processes must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("n", [2])
def test_effective_batch_counts_every_rank(n, monkeypatch):
    from types import SimpleNamespace

    from harness import distributed
    monkeypatch.setenv("WORLD_SIZE", str(n))
    cfg = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=3)
    assert distributed.params(cfg) == {"distributed/world_size": n,
                                       "distributed/effective_batch_size": 4 * n * 3}
