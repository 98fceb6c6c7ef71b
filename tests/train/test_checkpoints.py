"""A sweep trial killed mid-training resumes from its last checkpoint: the same final weights,
metrics and loss curve as a trial that was never stopped (exact on the CPU)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.train import checkpoints
from harness.config import recipe
from harness.study import sweep


def _final_weights(run) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(run.data.tags["harness.adapter_dir"]) / "adapter_model.safetensors"))


def _trial_run(client, exp_name: str):
    exp = client.get_experiment_by_name(exp_name)
    runs = client.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'",
                              order_by=["attributes.start_time DESC"])
    return runs[0]


@pytest.mark.slow
def test_a_trial_killed_after_its_checkpoint_resumes_from_it(recipe_dict, tmp_path,
                                                             write_recipe, client):
    import torch
    # each step saves a checkpoint; the signal goes at the first, so a trial of 5 steps keeps
    # 3 or more after it (a step costs ~1 s on the 2-core CPU, in each of the three runs)
    steps = 5
    d = dict(recipe_dict, checkpoint_minutes=0.001)  # several saves a trial
    d["trainer"] = dict(d["trainer"], max_steps=steps)
    (tmp_path / "one.yaml").write_text(
        "n_trials: 1\nsampler: random\nseed: 0\nparams:\n"
        "  trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n")
    d["sweep"] = dict(d["sweep"], space=str(tmp_path / "one.yaml"))

    # the same trial, never stopped and never saved midway, in stores of its own
    ref = dict(d, name="ref", output_dir=str(tmp_path / "ref_out"), checkpoint_minutes=0)
    ref["sweep"] = dict(d["sweep"], storage=f"sqlite:///{tmp_path}/ref.db")
    sweep.run_sweep(recipe.build(ref, "ref.yaml"))
    reference = _trial_run(client, "ref")

    path = write_recipe(d)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", path],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the harness's own line says when training starts
        if "trial-0: training" in line:
            break
    outputs = Path(d["output_dir"]) / "tiny"
    while not list(outputs.glob("*/checkpoint-*/" + checkpoints.STATE)):
        assert proc.poll() is None, "the sweep ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    killed = _trial_run(client, "tiny")
    assert killed.info.status == "KILLED"
    saved = checkpoints.last(outputs / killed.info.run_id)
    at = checkpoints.step(saved)
    assert 0 < at < steps, at

    sweep.run_sweep(recipe.build(d, path))
    resumed = _trial_run(client, "tiny")
    assert resumed.info.run_id != killed.info.run_id
    assert resumed.data.tags["harness.resumed_from"] == killed.info.run_id
    assert int(resumed.data.tags["harness.resumed_step"]) >= at
    def rate(run):
        return {k: v for k, v in run.data.params.items() if k.endswith("learning_rate")}
    assert rate(resumed) and rate(resumed) == rate(reference)
    # what it trained equals the run that never stopped, bit for bit
    mine, theirs = _final_weights(resumed), _final_weights(reference)
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    key = "after/math/numeric_accuracy"
    assert resumed.data.metrics[key] == reference.data.metrics[key]
    # one loss point a step, 1..steps, the same values as the uninterrupted curve
    curve = client.get_metric_history(resumed.info.run_id, "loss")
    assert sorted(m.step for m in curve) == list(range(1, steps + 1))
    ref_curve = {m.step: m.value for m in client.get_metric_history(reference.info.run_id, "loss")}
    assert {m.step: m.value for m in curve} == ref_curve
    # the checkpoints served their resume: none is left behind
    assert not list(outputs.glob("*/checkpoint-*"))


@pytest.mark.parametrize("minutes, trainer, expected", [
    (10.0, {}, True), (0, {}, False), (10.0, {"save_strategy": "steps", "save_steps": 5}, False)])
def test_who_decides_when_a_run_saves(recipe_dict, minutes, trainer, expected):
    from harness.train import trainers
    d = dict(recipe_dict, checkpoint_minutes=minutes)
    d["trainer"] = {**d["trainer"], **trainer}
    assert trainers.saves_by_time(recipe.build(d, "r.yaml")) is expected


def test_last_skips_a_checkpoint_cut_off_while_saving(tmp_path):
    for step, whole in ((5, True), (10, True), (15, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if whole:
            (folder / checkpoints.STATE).write_text('{"global_step": %d, "log_history": []}' % step)
    assert checkpoints.last(tmp_path) == str(tmp_path / "checkpoint-10")
    assert checkpoints.step(checkpoints.last(tmp_path)) == 10
    assert checkpoints.last(tmp_path / "nothing") is None
