"""`harness train --processes 2`: real DDP through torchrun, gloo on the CPU, tiny model."""
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_processes_train_together_and_rank_0_alone_logs(recipe_dict, write_recipe):
    import mlflow
    # two loader workers a rank, kept across epochs (a GPU plan's default): the ranks exit
    # with them alive
    d = dict(recipe_dict, trainer=dict(recipe_dict["trainer"], max_steps=3,
                                       per_device_train_batch_size=2, dataloader_num_workers=2))
    proc = subprocess.run([sys.executable, "-m", "harness", "train", write_recipe(d),
                           "--processes", "2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              "tags.`harness.kind` = 'train'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 only
    run = runs[0]
    assert run.data.params["distributed/world_size"] == "2"
    assert run.data.params["distributed/effective_batch_size"] == "4"
    # what the DDP wrapper ran with: gradients reduced in place in its buckets, no per-step
    # broadcast of the buffers
    assert run.data.params["distributed/gradient_as_bucket_view"] == "True"
    assert run.data.params["distributed/broadcast_buffers"] == "False"
    assert run.data.metrics["distributed/in_sync"] == 1.0  # the same weights on both ranks
    assert "after/math/numeric_accuracy" in run.data.metrics  # scored once, by rank 0
    assert proc.stderr.count("[harness] run ") == 1  # one summary, from rank 0


@pytest.mark.slow
def test_a_failing_group_ends_in_its_ranks_lines_and_exit_code(recipe_dict, write_recipe):
    """A fault inside the ranks (a diverging run) gives rank 0's one line and exit 1, not
    torchrun's ChildFailedError traceback; the run ends FAILED, not RUNNING."""
    import mlflow
    d = dict(recipe_dict, trainer=dict(recipe_dict["trainer"], max_steps=6, learning_rate=1e12))
    proc = subprocess.run([sys.executable, "-m", "harness", "train", write_recipe(d),
                           "--processes", "2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "training diverged" in errors[0], proc.stderr[-3000:]
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    # rank 1 leaves it to rank 0, which fails the run (it is not stopped halfway by torchrun)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"


def test_processes_below_one_is_bad_input(recipe_dict, write_recipe, capsys):
    from harness.commands import cli
    assert cli.main(["train", write_recipe(recipe_dict), "--processes", "0"]) == 2
    assert "--processes: --processes must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("n", [2])
def test_effective_batch_counts_every_rank(n, monkeypatch):
    from types import SimpleNamespace

    from harness.train import distributed
    monkeypatch.setenv("WORLD_SIZE", str(n))
    cfg = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=3)
    assert distributed.params(cfg) == {"distributed/world_size": n,
                                       "distributed/effective_batch_size": 4 * n * 3}


@pytest.mark.slow
def test_a_sweep_of_two_process_trials_prunes_on_every_rank(recipe_dict, tmp_path, write_recipe,
                                                            capsys):
    """processes_per_trial: 2 -> the whole sweep runs once in a torchrun group (gloo here):
    rank 0 scores the start, runs the study and logs; rank 1 trains the same values and stops
    when rank 0's pruner says so. `harness sweep` prints its summary once."""
    import mlflow
    import optuna

    from harness.commands import cli
    # a good and a hopeless learning rate; the group's rank 0 samples with seed 6: good, good,
    # hopeless
    (tmp_path / "ddp.yaml").write_text(
        "n_trials: 3\nsampler: random\nseed: 6\nprocesses_per_trial: 2\n"
        "pruner: {type: median, intermediate: eval_loss, every_steps: 1, n_startup_trials: 1}\n"
        "params:\n  trainer.learning_rate: {type: categorical, choices: [3.0e-2, 1.0e-7]}\n")
    d = dict(recipe_dict, data={"train": "builtin:math", "builtin_rows": 24, "eval_rows": 4})
    # 3 steps: room to prune before the last (a step of two ranks costs seconds on 2 cores)
    d["trainer"] = dict(d["trainer"], max_steps=3, per_device_train_batch_size=2)
    d["sweep"] = dict(d["sweep"], space=str(tmp_path / "ddp.yaml"))
    assert cli.main(["sweep", write_recipe(d)]) == 0
    said = capsys.readouterr().out
    assert said.count("sweep tiny: 3 trials finished") == 1, said
    study = optuna.load_study(study_name="tiny", storage=d["sweep"]["storage"])
    states = {t.number: (t.state.name, t.params["trainer.learning_rate"]) for t in study.trials}
    assert sorted(s for s, _ in states.values()) == ["COMPLETE", "COMPLETE", "PRUNED"], states
    assert all(lr == 1e-7 for s, lr in states.values() if s == "PRUNED")
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert max(pruned.intermediate_values) < 3  # both ranks stopped early, none hung
    client = mlflow.MlflowClient(d["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    # the sweep, its 3 trials and the records of the start and of the best: rank 1 logs nothing
    assert sorted(r.data.tags["harness.kind"] for r in runs) == [
        "after", "before", "sweep", "trial", "trial", "trial"]
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.params["distributed/world_size"] == "2"
        assert run.data.params["distributed/effective_batch_size"] == "4"
        if t.state.name == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert run.data.metrics["distributed/in_sync"] == 1.0
            assert "after/math/numeric_accuracy" in run.data.metrics
        else:
            assert run.info.status == "KILLED"
    parent = client.get_run(study.user_attrs["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    # the sweep itself ran in the group (one start-up), not only its trials
    assert parent.data.params["distributed/world_size"] == "2"
    assert not list((tmp_path / "outputs" / "tiny").glob("sweep-*.json"))  # read and removed


def test_trials_of_more_gpus_than_the_machine_has_are_bad_input(recipe_dict, tmp_path,
                                                                 monkeypatch, empty_mlflow_store):
    from harness.train import distributed
    from harness.config import recipe
    from harness.study import search, sweep
    from harness.core.errors import HarnessError
    monkeypatch.setattr(distributed, "_machine_gpus", ["0", "1"])
    (tmp_path / "two.yaml").write_text("processes_per_trial: 2\nparams:\n"
                                       "  adapter.r: {type: categorical, choices: [4, 8]}\n")
    r = recipe.build(dict(recipe_dict, sweep=dict(recipe_dict["sweep"],
                                                  space=str(tmp_path / "two.yaml"))), "r.yaml")
    with pytest.raises(HarnessError, match=r"processes_per_trial: 2 worker\(s\) of 2 GPUs need 4"):
        sweep.run_sweep(r, workers=2)
    sweep.check_gpus(r, search.load_space(r), workers=1)  # 2 GPUs for one worker of 2: fine
    # refused before any store was written: the recipe's store is still the empty one it began as
    assert (tmp_path / "mlflow.db").read_bytes() == empty_mlflow_store.read_bytes()
