"""The scenario matrix: every documented path, end to end through the command line, as a user
runs it from a folder of their own (not this checkout: shipped golden sets and sweep spaces come
from the package), on the tiny model.

Cells are chosen so each feature appears at least once, not the full product: each method
(sft, dpo, reward, kto, grpo), each data format (messages; prompt/completion as strings and as
chat; instruction/input/output; question/answer; plain text; explicit and implicit preference
pairs; unpaired prompt/completion/label; prompts with answers; ShareGPT conversations)
and file type (JSONL, CSV, Parquet), each command (train, sweep, eval, rerun, report, export),
each pruner intermediate (objective on packed varlen batches, eval_loss), early stopping and
init_from chaining. Every cell checks the MLflow runs' statuses, their metrics and the report,
and that no run is left RUNNING. Parallel workers (PostgreSQL and journal studies, a tracking
server on PostgreSQL) run two sweeps in a row in one test, so a race shows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import harness_server, small_goldenset
from harness.commands import cli
from harness.data import mathgen
from harness.config import recipe
from harness.study import storage, sweep

pytestmark = pytest.mark.slow  # end to end through the command line, each


@dataclass
class Cell:
    id: str
    fmt: str  # a key of ROWS
    ext: str  # jsonl | csv | parquet
    commands: list[str]
    method: str = "sft"
    recipe: dict = field(default_factory=dict)  # dotted keys set on the cell's recipe
    space: str | None = None  # the sweep file's text
    chain: bool = False  # train an SFT run first and start this one from it (init_from)


def _rows(fmt: str, n: int = 12) -> list[dict]:
    """n rows of the built-in math problems in a documented format."""
    def chat(role, text):
        return {"role": role, "content": text}
    out = []
    for q in mathgen.generate_preference_rows(n, seed=7):
        p, a, bad = q["prompt"], q["chosen"], q["rejected"]
        out.append({
            "messages": {"messages": [chat("user", p), chat("assistant", a)]},
            # ShareGPT, two assistant turns: both trained
            "conversations": {"conversations": [
                {"from": "system", "value": "Solve it."}, {"from": "human", "value": p},
                {"from": "gpt", "value": a}, {"from": "human", "value": "Sure?"},
                {"from": "gpt", "value": "Yes."}]},
            "prompt_completion": {"prompt": p, "completion": a},
            "prompt_completion_chat": {"prompt": [chat("user", p)],
                                       "completion": [chat("assistant", a)]},
            "instruction": {"instruction": "Solve the problem.", "input": p, "output": a},
            "question_answer": {"question": p, "answer": a},
            "text": {"text": f"{p}\n{a}"},
            "explicit_pairs": {"prompt": p, "chosen": a, "rejected": bad},
            "unpaired": {"prompt": p, "completion": a if len(out) % 2 == 0 else bad,
                         "label": len(out) % 2 == 0},
            "prompt_answer": {"prompt": p, "answer": a},
            "implicit_pairs": {"chosen": [chat("user", p), chat("assistant", a)],
                               "rejected": [chat("user", p), chat("assistant", bad)]},
        }[fmt])
    return out


def _write_rows(rows: list[dict], path: Path) -> str:
    import pandas as pd
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path.name


PRUNE_OBJECTIVE = ("n_trials: 2\nsampler: random\nseed: 1\n"
                   "pruner: {type: median, intermediate: objective, examples: 2, every_steps: 1, "
                   "n_startup_trials: 0}\nparams:\n"
                   "  trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n")
PRUNE_EVAL_LOSS = ("n_trials: 2\nsampler: tpe\nseed: 0\n"
                   "pruner: {type: successive_halving, intermediate: eval_loss, every_steps: 1, "
                   "min_resource: 1}\nparams:\n"
                   "  trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                   "  adapter.r: {type: categorical, choices: [2, 4]}\n")
CELLS = [
    Cell("sft-messages-jsonl-train-report-export", "messages", "jsonl",
         ["train", "report", "export"]),
    Cell("sft-conversations-jsonl-train", "conversations", "jsonl", ["train"]),
    Cell("sft-prompt-completion-strings-csv-early-stopping", "prompt_completion", "csv", ["train"],
         recipe={"data.eval_rows": 4, "early_stopping": {"patience": 2, "eval_steps": 1},
                 "trainer.max_steps": 4}),
    Cell("sft-prompt-completion-chat-parquet-rerun", "prompt_completion_chat", "parquet",
         ["train", "rerun"]),
    Cell("sft-instruction-jsonl-eval", "instruction", "jsonl", ["train", "eval"]),
    # the golden slice is generated mid-training while packed batches use harness_varlen
    Cell("sft-question-answer-csv-packed-sweep-pruner-objective", "question_answer", "csv",
         ["sweep"], space=PRUNE_OBJECTIVE,
         recipe={"trainer.packing": True, "model.attn_implementation": "harness_varlen"}),
    Cell("sft-text-jsonl-sweep-pruner-eval-loss", "text", "jsonl", ["sweep"],
         space=PRUNE_EVAL_LOSS, recipe={"data.eval_rows": 4, "trainer.max_steps": 3}),
    Cell("dpo-implicit-pairs-jsonl-init-from-sft", "implicit_pairs", "jsonl", ["train"],
         method="dpo", chain=True, recipe={"data.eval_rows": 2}),
    Cell("reward-explicit-pairs-parquet-train", "explicit_pairs", "parquet", ["train"],
         method="reward"),
    Cell("kto-unpaired-csv-init-from-sft", "unpaired", "csv", ["train"], method="kto",
         chain=True),
    Cell("grpo-prompt-answer-jsonl-train-export", "prompt_answer", "jsonl", ["train", "export"],
         method="grpo"),
]


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """An empty folder of the user's own, the working directory (no goldensets/ or sweeps/)."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HARNESS_CRASH_DIR", str(tmp_path / "crashes"))
    return folder


def _recipe(extra: dict, folder: Path, tiny_model_dir: str, method: str, fmt: str, ext: str,
            name: str) -> dict:
    """A recipe with relative paths, as a user writes it beside their data. The forgetting
    guard is left at its default: the shipped builtin:general_knowledge."""
    pref = method in ("dpo", "reward", "kto")
    gs = Path(small_goldenset(folder, "math_preferences.jsonl" if pref else "math.jsonl",
                              "name: prefs\ntask: preference\nprompt_field: prompt\nmetrics: "
                              "[pairwise_accuracy, score_margin]\n" if pref else
                              "name: math\ntask: math\nmax_new_tokens: 6\nmetrics: "
                              "[numeric_accuracy, answer_format, perplexity]\n"))
    d = {"name": name, "method": method,
         "model": {"name": tiny_model_dir}, "adapter": {"r": 4, "alpha": 8},
         "data": {"train": _write_rows(_rows(fmt), folder / f"{name}.{ext}")},
         "trainer": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 160},
         "eval": {"goldensets": [gs.name], "batch_size": 4, "max_examples": 3,
                  **({} if method == "reward" else {"max_new_tokens": 6})},
         "sweep": {"objective": "prefs/pairwise_accuracy" if pref else "math/numeric_accuracy",
                   "storage": "sqlite:///optuna.db"},
         # absolute: MLflow keeps one store per URI in a process, and the tests share processes
         "tracking": {"uri": f"sqlite:///{folder}/mlflow.db"}}
    if method == "grpo":  # completions sampled and rewarded: no max_length, a few short ones
        d["trainer"] = {"max_steps": 1, "per_device_train_batch_size": 2, "num_generations": 2,
                        "max_completion_length": 6}
        d["rewards"] = [{"name": "math_answer"}, {"name": "answer_format", "weight": 0.5}]
    for k, v in extra.items():
        _set(d, k, v)
    return d


def _cli(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert "Traceback" not in out.err
    return out.out + out.err


def _runs(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_scenario(cell, user_dir, tiny_model_dir, capsys):
    import mlflow
    import optuna
    store = f"sqlite:///{user_dir}/mlflow.db"
    client = mlflow.MlflowClient(store)
    sft_run, extra = None, dict(cell.recipe)
    if cell.chain:  # an SFT run to start from, by its MLflow run id
        d = _recipe({}, user_dir, tiny_model_dir, "sft", "messages", "jsonl", "chain-sft")
        Path("chain-sft.yaml").write_text(yaml.safe_dump(d))
        _cli(capsys, "train", "chain-sft.yaml", "--set", "trainer.learning_rate=5e-3")
        (sft_run,) = [r for r in _runs(client, "chain-sft")
                      if r.data.tags["harness.kind"] == "train"]
        extra["model.init_from"] = sft_run.info.run_id
    d = _recipe(extra, user_dir, tiny_model_dir, cell.method, cell.fmt, cell.ext, "cell")
    if cell.space:
        Path("space.yaml").write_text(cell.space)
        d["sweep"]["space"] = "space.yaml"
    Path("recipe.yaml").write_text(yaml.safe_dump(d))
    key = d["sweep"]["objective"]
    set_name = key.split("/")[0]

    for command in cell.commands:
        if command == "train":
            said = _cli(capsys, "train", "recipe.yaml")
            run = next(r for r in _runs(client, "cell") if r.data.tags["harness.kind"] == "train")
            m = run.data.metrics
            for side in ("before", "after", "delta", "p_value"):
                assert f"{side}/{key}" in m, sorted(m)
            # the forgetting guard, shipped in the package, scored from a folder without it
            assert any(k.startswith("after/general_knowledge/") for k in m), sorted(m)
            assert f"run {run.info.run_id}" in said
            report = Path("reports/cell/report.md").read_text()
            assert "## Before / after" in report and key in report
            # where the time went: the phases add up to the command's wall time
            phases = {k: v for k, v in m.items() if k.startswith("time/") and k != "time/total"}
            assert {"time/startup", "time/data", "time/model_load", "time/score_before",
                    "time/train", "time/score_after", "time/logging", "time/report",
                    "time/other"} <= set(phases)
            assert sum(phases.values()) == pytest.approx(m["time/total"], rel=1e-3)
            assert m["time/other"] < 0.25 * m["time/total"]  # the phases cover the command
            assert "## Where the time went" in report and "| training |" in report
            inputs = {i.dataset.name for i in run.inputs.dataset_inputs}
            assert {"train", set_name, "general_knowledge"} <= inputs
            # conversations train every assistant turn; SmolLM2's template has no markers
            assert run.data.params.get("data.turn_mask") == (
                "harness_incremental" if cell.fmt in ("messages", "conversations") else None)
        elif command == "report":
            Path("reports/cell/report.md").unlink()
            _cli(capsys, "report", run.info.run_id, "--tracking-uri", store)
            rebuilt = Path("reports/cell/report.md").read_text()
            assert "## Before / after" in rebuilt and "## Where the time went" in rebuilt
            # the machine the run's figures came from, read back from its manifest
            import platform
            assert f"Ran on {platform.platform()} (float32)." in rebuilt
        elif command == "export":
            from transformers import AutoModelForCausalLM
            _cli(capsys, "export", run.info.run_id, "exported", "--merge",
                 "--tracking-uri", store)
            model = AutoModelForCausalLM.from_pretrained("exported")
            assert not any("lora" in n for n, _ in model.named_parameters())
        elif command == "rerun":
            said = _cli(capsys, "rerun", run.info.run_id, "--tracking-uri", store)
            again = [r for r in _runs(client, "cell")
                     if r.data.tags.get("harness.rerun_of") == run.info.run_id]
            assert len(again) == 1 and again[0].info.status == "FINISHED"
            assert f"after/{key}" in again[0].data.metrics and key in said
        elif command == "eval":
            said = _cli(capsys, "eval", run.info.run_id, "--before", tiny_model_dir, "--recipe",
                        "recipe.yaml")
            (ev,) = [r for r in _runs(client, "cell") if r.data.tags["harness.kind"] == "eval"]
            assert ev.info.status == "FINISHED"
            assert {f"before/{key}", f"after/{key}", f"p_value/{key}", "time/score_before",
                    "time/score_after"} <= set(ev.data.metrics)
            assert f"run {ev.info.run_id}; report: " in said
        elif command == "sweep":
            said = _cli(capsys, "sweep", "recipe.yaml")
            assert "sweep cell: 2 trials finished" in said
            study = optuna.load_study(study_name="cell", storage="sqlite:///optuna.db")
            states = {t.state.name for t in study.trials}
            assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states, states
            # the pruner saw an intermediate value during training in every trial
            assert all(t.intermediate_values for t in study.trials)
            runs = _runs(client, "cell")
            trials = [r for r in runs if r.data.tags["harness.kind"] == "trial"]
            assert len(trials) == 2
            for t in study.trials:
                r = next(x for x in trials if x.info.run_id == t.user_attrs["mlflow_run_id"])
                assert r.info.status == ("FINISHED" if t.state.name == "COMPLETE" else "KILLED")
                assert client.get_metric_history(r.info.run_id, "intermediate/value")
            parent = next(r for r in runs if r.data.tags["harness.kind"] == "sweep")
            assert parent.info.status == "FINISHED" and f"best/{key}" in parent.data.metrics
            assert {"time/score_before", "time/train", "time/report", "time/total"} <= set(
                parent.data.metrics)
            report = Path("reports/cell/report.md").read_text()
            assert "## All trials" in report and "## Where the time went" in report
            assert "Finished trials, summed over trials:" in report
    if cell.id.startswith("sft-prompt-completion-strings"):  # early stopping evaluated
        assert len(client.get_metric_history(run.info.run_id, "eval_loss")) >= 2
    if sft_run is not None:
        assert run.data.tags["harness.init_from"] == sft_run.info.run_id
        assert f"base/{key}" in run.data.metrics
    every = [r for e in client.search_experiments() for r in _runs(client, e.name)]
    assert every and not [r for r in every if r.info.status == "RUNNING"]
    assert not list((user_dir.parent / "crashes").glob("*"))
    mlflow.set_tracking_uri(None)


@pytest.fixture
def mlflow_server(pg_database, tmp_path):
    """`harness server` on a fresh PostgreSQL database."""
    with harness_server("server", "--backend-store-uri", pg_database(),
                        "--artifacts-destination", str(tmp_path / "served-artifacts")) as (url, _):
        yield url


@pytest.mark.postgres  # the MLflow server's store, whichever the study's
@pytest.mark.parametrize("backend", ["postgresql", "journal"])
def test_two_workers_two_sweeps_in_a_row(recipe_dict, tmp_path, write_recipe, pg_database,
                                         mlflow_server, backend, monkeypatch):
    """`--workers 2`: two worker processes on one Optuna study (RDB storage on a real
    PostgreSQL, or a journal file) and one `harness server` backed by PostgreSQL. Two sweeps
    in a row, each a new study and experiment, so a race between the workers (both logging the
    same golden set, both asking for a trial) shows: no trial lost or repeated, no run left
    RUNNING, every worker exits cleanly, each on its share of the CPU's cores (its trials'
    manifests). (A third sweep, random like the first, cost CI 50 s and tested nothing the
    first did not; tests/study/test_sweep.py covers a grid's workers further.)"""
    import os

    import mlflow
    import optuna
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # as a user's shell has it
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    (tmp_path / "space4.yaml").write_text(
        "n_trials: 4\nsampler: random\nparams:\n"
        "  trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n")
    # the second sweep a grid: the workers must split its points, not draw them each
    (tmp_path / "grid4.yaml").write_text(
        "n_trials: 4\nsampler: grid\nparams:\n  trainer.learning_rate: "
        "{type: categorical, choices: [1.0e-4, 2.0e-4, 4.0e-4, 8.0e-4]}\n")
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    for i in range(2):
        d = dict(recipe_dict, name=f"tiny-{i}")
        url = pg_database() if backend == "postgresql" else f"journal:///{tmp_path}/study{i}.log"
        d["sweep"] = dict(d["sweep"], storage=url,
                          space=str(tmp_path / ("grid4.yaml" if i == 1 else "space4.yaml")))
        d["tracking"] = {"uri": mlflow_server}
        d["eval"] = dict(d["eval"], max_examples=2)
        # one step a trial: the race is in asking, logging and telling, not in training
        d["trainer"] = dict(d["trainer"], max_steps=1)
        out = sweep.run_sweep(recipe.build(d, write_recipe(d, f"r{i}.yaml")), workers=2)
        study = optuna.load_study(study_name=f"tiny-{i}", storage=storage.open_storage(
            url, recipe.SweepFile(params={"x": {"type": "int", "low": 0, "high": 1}})))
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4, i
        runs = _runs(client, f"tiny-{i}")
        trials = [r for r in runs if r.data.tags.get("harness.kind") == "trial"]
        assert sorted(int(r.data.tags["harness.trial"]) for r in trials) == [0, 1, 2, 3]
        assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {out.parent_run_id}
        assert {r.info.status for r in runs} == {"FINISHED"}, i
        assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {
            r.info.run_id for r in trials}
        assert len({t.params["trainer.learning_rate"] for t in study.trials}) == 4  # no repeat
        parent_arts = {a.path for a in client.list_artifacts(out.parent_run_id)}
        assert {"report", "eval"} <= parent_arts  # served by the server
        assert all(client.get_logged_model(r.data.tags["harness.model_id"]).status == "READY"
                   for r in trials)  # the trials' adapters, through the server
        assert {mlflow.artifacts.load_dict(f"runs:/{r.info.run_id}/manifest.json")["device"][
            "torch_threads"] for r in trials} == {share}, i
    mlflow.set_tracking_uri(None)


def test_the_shipped_chat_recipe_from_a_users_folder(user_dir, tiny_model_dir, capsys):
    """recipes/sft_chat.yaml as a user copies it beside their chats: every assistant turn
    trained, a golden set cut from the file, the shipped sweep space (gp sampler), and a report
    that says what the set can detect and what the sampler did."""
    import shutil

    import mlflow
    src = Path(__file__).resolve().parent.parent / "recipes"
    (user_dir / "recipes" / "data").mkdir(parents=True)
    shutil.copy(src / "data" / "bookshop_chats.jsonl", user_dir / "recipes" / "data")
    d = yaml.safe_load((src / "sft_chat.yaml").read_text())
    store = f"sqlite:///{user_dir}/mlflow.db"
    d["model"]["name"] = tiny_model_dir
    d["trainer"].update(max_steps=2, per_device_train_batch_size=4)
    d["eval"].update(max_examples=4, batch_size=4)
    d["eval"]["from_train"].update(rows=8, max_new_tokens=6)
    d["sweep"]["storage"] = "sqlite:///optuna.db"
    d["tracking"] = {"uri": store}
    Path("chat.yaml").write_text(yaml.safe_dump(d))
    said = _cli(capsys, "sweep", "chat.yaml")
    assert "sweep sft_chat: 2 trials finished" in said
    assert "every assistant turn trained: harness_incremental" in said
    assert "8 held out as golden set chats" in said
    client = mlflow.MlflowClient(store)
    runs = _runs(client, "sft_chat")
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    trials = [r for r in runs if r.data.tags["harness.kind"] == "trial"]
    assert len(trials) == 2
    assert all("after/chats/rougeL" in t.data.metrics for t in trials)
    assert all(t.data.params["data.turn_mask"] == "harness_incremental" for t in trials)
    assert all(t.data.params["data.rows_golden"] == "8" for t in trials)
    best = next(t for t in trials if "after/chats_heldout/rougeL" in t.data.metrics)
    assert "p_holm/chats_heldout/rougeL" in best.data.metrics
    report = Path("reports/sft_chat/report.md").read_text()
    assert "What these golden sets can detect" in report and "chats_heldout" in report
    assert "Sampler:" in report
