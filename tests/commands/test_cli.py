"""The command line as a user runs it: exit codes, one-line errors, start-up time."""
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def harness(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_help_is_fast_and_lists_commands():
    t = time.monotonic()
    out = harness("--help")
    assert time.monotonic() - t < 5
    assert out.returncode == 0
    for cmd in ("validate", "train", "sweep", "ui"):
        assert cmd in out.stdout


def test_validate_ok():
    out = harness("validate", "recipes/sft_math.yaml")
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_validate_states_what_each_golden_set_can_detect(tmp_path):
    """Before any GPU time: the objective's held-out part (85 of the math set's 170), and a
    golden set cut from the data (a tenth of 96 rows: 10), at the figures harness.eval.stats
    gives, with the direction the sweep will take."""
    from harness.eval import stats
    out = harness("validate", "recipes/sft_math.yaml", "--set", "eval.from_train.rows=0.1",
                  "--set", "sweep.objective=eval_loss", "--set", "data.eval_rows=8",
                  "--set", "sweep.direction=null")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith("2 golden set(s), objective eval_loss, minimize)")
    math = next(x for x in lines if x.strip().startswith("math:"))
    assert "170 examples" in math and "80% power at p < 0.05" in math
    for base in (0.1, 0.5):
        assert f"+{stats.detectable_lift(170, base) * 100:.1f} points from {base:.2f}" in math
    assert f"perplexity: a mean change of {stats.detectable_shift(170):.2f} SD" in math
    own = next(x for x in lines if x.strip().startswith("builtin_math:"))
    assert "10 examples" in own and f"{stats.detectable_shift(10):.2f} SD" in own
    # the shipped sweep: the objective's set by the part held out of selection
    out = harness("validate", "recipes/sft_math.yaml")
    held = next(x for x in out.stdout.splitlines() if "math_heldout" in x)
    assert "85 examples held out of selection (of 170)" in held
    assert f"+{stats.detectable_lift(85, 0.1) * 100:.1f} points from 0.10" in held


@pytest.mark.parametrize("args, needle", [
    (["--set", "trainer.lerning_rate=1e-4"],
     "recipes/sft_math.yaml: trainer.lerning_rate: unknown key; did you mean learning_rate?"),
    (["--set", "adapter.r=0"], "adapter.r: input should be greater than 0"),
    (["--set", "sweep.objective=math/acuracy"], "did you mean math/numeric_accuracy?"),
    (["--set", "eval.goldensets=[nope.yaml]"], "eval.goldensets.0: golden-set manifest"),
    (["--set", "sweep.objective=eval_loss"],
     "recipes/sft_math.yaml: sweep.objective: eval_loss is the trainer's loss on held-out "
     "training rows: set data.eval_rows"),
    (["--set", "eval.from_train.rows=1.5"], "eval.from_train.rows: a share is below 1"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    out = harness("validate", "recipes/sft_math.yaml", *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_train_with_bad_data_leaves_no_run_running(recipe_dict, write_recipe, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": "b"}\nnot json\n')
    recipe_dict["data"]["train"] = str(tmp_path / "bad.jsonl")
    out = harness("train", write_recipe(recipe_dict))
    assert out.returncode == 2 and "bad.jsonl: row 2: not valid JSON" in out.stderr
    errors = [x for x in out.stderr.splitlines() if not x.startswith("[harness]")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in out.stderr
    import mlflow
    mlflow.set_tracking_uri(recipe_dict["tracking"]["uri"])
    exp = mlflow.get_experiment_by_name("tiny")
    assert exp is None or all(r.info.status != "RUNNING" for r in
                              mlflow.MlflowClient().search_runs([exp.experiment_id]))
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_train_command_end_to_end(recipe_dict, write_recipe, tmp_path):
    out = harness("train", write_recipe(recipe_dict), "--set", "trainer.max_steps=1")
    assert out.returncode == 0, out.stderr
    assert "math/numeric_accuracy:" in out.stderr
    report = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert "## Before / after" in report
    assert re.search(r"Ran on CPU, \d+ threads \(float32\)\.", report), report[:400]


@pytest.mark.parametrize("args, needle", [
    ([], "required: COMMAND"),
    (["train"], "harness train: the following arguments are required: recipe"),
    (["sweep", "recipes/sft_math.yaml", "--n-trials", "two"], "invalid int value: 'two'"),
    (["swep", "recipes/sft_math.yaml"], "invalid choice: 'swep'"),
    (["train", "recipes/nope.yaml"], "recipes/nope.yaml: recipe file not found"),
])
def test_bad_command_lines_are_one_line_exit_2(args, needle):
    out = harness(*args)
    assert out.returncode == 2 and needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_an_unexpected_error_is_one_line_a_crash_log_and_a_failed_run(recipe_dict,
                                                                         write_recipe, tmp_path):
    """A bug (here: the comparison raises) while scoring the tuned model: one line naming the
    error, the phase and the crash log, exit 1, the traceback in the log and on the MLflow
    run, and no run left RUNNING."""
    import os

    import mlflow
    path = write_recipe(recipe_dict)
    code = ("import sys\nfrom harness.commands import cli\nfrom harness.pipeline import run\n"
            "def boom(*a, **k):\n    raise RuntimeError('comparison exploded\\nsecond line')\n"
            "run.compare = boom\nsys.argv = ['harness', 'train', sys.argv[1]]\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HARNESS_CRASH_DIR": str(tmp_path / "c")})
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1, out.stderr[-2000:]
    line = errors[0]
    assert "unexpected RuntimeError while scoring tiny: comparison exploded;" in line, line
    (log,) = (tmp_path / "c").glob("*-train.log")
    assert f"crash log {log}" in line
    assert "Traceback" in log.read_text() and "comparison exploded" in log.read_text()
    client = mlflow.MlflowClient(recipe_dict["tracking"]["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FAILED" and f"also on MLflow run {run.info.run_id}" in line
    assert run.data.tags["harness.error"] == "RuntimeError: comparison exploded"
    logged = Path(client.download_artifacts(run.info.run_id, "crash.log", str(tmp_path)))
    assert "in boom" in logged.read_text()


@pytest.mark.slow
def test_a_sweep_prints_no_library_warnings(recipe_dict, write_recipe):
    """Warnings are not muted, so the ones the harness knows not to be the user's
    (harness.cli.KNOWN_WARNINGS: Optuna's experimental heartbeats, MLflow's own deprecations)
    must be the only ones a sweep meets."""
    out = harness("sweep", write_recipe(recipe_dict), "--n-trials", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    said = [x for x in out.stderr.splitlines() if "Warning" in x]
    assert not said, said


def test_plots_of_trials_sharing_a_value_print_no_warning(tmp_path):
    """Trials that share a parameter's value (a grid, a resumed study) give the parallel-coordinate
    plot an axis of one value: matplotlib warns about Optuna's call, and the CLI's filters hide
    exactly that (the plot is still made)."""
    import warnings

    import optuna

    from harness.commands.cli import KNOWN_WARNINGS
    from harness.study.sweep import study_plots
    study = optuna.create_study(direction="maximize")
    for r, value in ((8, 0.1), (16, 0.3), (32, 0.2)):  # every trial at the same learning rate
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": 1e-4, "lora_r": r}, value=value, distributions={
                "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True),
                "lora_r": optuna.distributions.CategoricalDistribution([8, 16, 32])}))
    for filtered in (False, True):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if filtered:
                for message, category in KNOWN_WARNINGS:
                    warnings.filterwarnings("ignore", message=message, category=category)
            (tmp_path / str(filtered)).mkdir()
            made = study_plots(study, tmp_path / str(filtered))
        assert any(m.endswith("parallel_coordinate.png") for m in made), made
        said = [str(w.message) for w in seen if "identical low and high ylims" in str(w.message)]
        assert bool(said) is not filtered, said
