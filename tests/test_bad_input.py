"""The bad-input corpus: every case is one `harness` command on a broken recipe, sweep file,
dataset, golden set or argument. Each must give exit code 2 and one `error:` line naming the file
and the key or row, no traceback, and leave no MLflow run RUNNING."""
import json
from dataclasses import dataclass, field

import pytest
import yaml

from harness.commands import cli


@dataclass
class Case:
    id: str
    command: str = "validate"  # validate | train | sweep | eval | cli
    recipe: dict = field(default_factory=dict)  # dotted keys set on the tiny recipe
    files: dict = field(default_factory=dict)  # name -> text written under tmp_path
    raw: str | bytes | None = None  # the recipe file's text (or bytes), not the tiny recipe
    argv: list | None = None  # for command == "cli": the arguments after `harness`
    expect: tuple = ()  # substrings of the error line ({tmp} is tmp_path)


CHAT = '{"messages": %s}'
# "billion laughs": nine levels of nine aliases each, 9**9 values once expanded
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
U, A, S = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))
CASES = [
    # recipes
    Case("yaml-malformed", raw="name: [unclosed\n", expect=("recipe.yaml", "YAML")),
    Case("recipe-not-utf8", raw=b"name: caf\xe9\nmethod: sft\n",
         expect=("recipe.yaml", "not UTF-8 text (byte 0xe9 at offset 9)")),
    Case("yaml-alias-bomb", raw=BOMB, expect=("recipe.yaml", "aliases expand to more than")),
    Case("yaml-nested-too-deep", raw="name: " + "[" * 5000 + "]" * 5000 + "\n",
         expect=("recipe.yaml", "nested too deeply")),
    Case("sweep-file-alias-bomb", files={"s.yaml": BOMB}, recipe={"sweep.space": "{tmp}/s.yaml"},
         expect=("s.yaml", "aliases expand")),
    Case("yaml-list-not-mapping", raw="- a\n- b\n", expect=("recipe.yaml", "mapping")),
    Case("section-is-a-list", recipe={"adapter": [1, 2]}, expect=("recipe.yaml", "adapter")),
    Case("unknown-key", recipe={"adaptr": {}}, expect=("adaptr", "did you mean adapter")),
    Case("unknown-nested-key", recipe={"adapter.rank": 8}, expect=("adapter.rank", "did you mean")),
    Case("wrong-type", recipe={"adapter.r": "big"}, expect=("adapter.r",)),
    Case("rank-zero", recipe={"adapter.r": 0}, expect=("adapter.r",)),
    Case("negative-lr", recipe={"trainer.learning_rate": -1e-4},
         expect=("trainer.learning_rate", "positive")),
    Case("zero-epochs", recipe={"trainer.num_train_epochs": 0, "trainer.max_steps": -1},
         expect=("trainer.num_train_epochs",)),
    Case("unknown-trainer-key", recipe={"trainer.learnin_rate": 1e-4},
         expect=("trainer.learnin_rate", "did you mean learning_rate")),
    Case("dpo-key-on-sft", recipe={"trainer.beta": 0.1}, expect=("trainer.beta", "dpo")),
    Case("unknown-method", recipe={"method": "ppo"}, expect=("method", "sft")),
    Case("quantization-on-cpu", command="train", recipe={"model.quantization": "4bit"},
         expect=("model.quantization", "CUDA")),
    Case("liger-on-cpu", command="train", recipe={"trainer.use_liger_kernel": True},
         expect=("trainer.use_liger_kernel", "GPU")),
    Case("model-path-missing", command="train", recipe={"model.name": "./no/such/model"},
         expect=("model.name", "does not exist")),
    Case("objective-unknown", recipe={"sweep.objective": "math/accuracy"},
         expect=("sweep.objective", "did you mean")),
    # data
    Case("data-file-missing", command="train", recipe={"data.train": "{tmp}/none.jsonl"},
         expect=("data.train",)),
    Case("data-empty", command="train", files={"d.jsonl": ""},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("d.jsonl",)),
    Case("data-not-json", command="train",
         files={"d.jsonl": '{"question": "q", "answer": "a"}\nnot json\n'},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("d.jsonl",)),
    Case("data-missing-columns", command="train", files={"d.jsonl": '{"foo": 1}\n'},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("d.jsonl", "format")),
    Case("chat-bad-role", command="train",
         files={"d.jsonl": CHAT % json.dumps([{"role": "bot", "content": "x"}, A]) + "\n"},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("d.jsonl", "row 1", "role")),
    Case("chat-system-not-first", command="train",
         files={"d.jsonl": CHAT % json.dumps([U, S, A]) + "\n"},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("row 1", "system")),
    Case("chat-two-user-turns", command="train",
         files={"d.jsonl": CHAT % json.dumps([U, A]) + "\n" + CHAT % json.dumps([U, U, A]) + "\n"},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("row 2", "two user turns")),
    Case("sharegpt-unknown-from", command="train", files={"d.jsonl": json.dumps(
        {"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "x"}]})
        + "\n"}, recipe={"data.train": "{tmp}/d.jsonl"},
        expect=("d.jsonl", "row 1", "conversations[1]: unknown from 'bot'")),
    Case("chat-tool-after-user", command="train",
         files={"d.jsonl": CHAT % json.dumps([U, {"role": "tool", "content": "x"}, A]) + "\n"},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("row 1", "tool turn must follow")),
    Case("chat-no-assistant", command="train",
         files={"d.jsonl": CHAT % json.dumps([U]) + "\n"},
         recipe={"data.train": "{tmp}/d.jsonl"}, expect=("row 1", "assistant")),
    Case("rows-longer-than-max-length", command="train", recipe={"trainer.max_length": 8},
         expect=("trainer.max_length", "longer")),
    Case("preference-chosen-equals-rejected", command="train", recipe={
        "method": "dpo", "data.train": "{tmp}/p.jsonl"},
        files={"p.jsonl": '{"prompt": "p", "chosen": "a", "rejected": "a"}\n' * 3},
        expect=("p.jsonl", "chosen equals rejected")),
    # golden sets
    Case("goldenset-missing", recipe={"eval.goldensets": ["{tmp}/none.yaml"]},
         expect=("eval.goldensets.0", "not found")),
    Case("goldenset-metric-unfit", files={"g.yaml": "name: g\nsource: g.jsonl\ntask: "
                                          "preference\nmetrics: [bleu]\n",
                                          "g.jsonl": '{"prompt": "p", "chosen": "a", '
                                          '"rejected": "b"}\n'},
         recipe={"eval.goldensets": ["{tmp}/g.yaml"], "sweep.objective": "g/bleu"},
         expect=("g.yaml", "bleu")),
    Case("goldenset-unknown-metric", files={"g.yaml": "name: g\nsource: g.jsonl\n"
                                            "metrics: [exact_mach]\n"},
         recipe={"eval.goldensets": ["{tmp}/g.yaml"]}, expect=("g.yaml", "did you mean")),
    Case("goldenset-bad-task", files={"g.yaml": "name: g\nsource: g.jsonl\ntask: qa\n"
                                      "metrics: [f1]\n"},
         recipe={"eval.goldensets": ["{tmp}/g.yaml"]}, expect=("g.yaml", "task")),
    Case("goldenset-task-typo", files={"g.yaml": "name: g\nsource: g.jsonl\ntask: generaton\n"
                                       "metrics: [f1]\n"},
         recipe={"eval.goldensets": ["{tmp}/g.yaml"]},
         expect=("g.yaml: task: unknown golden-set task 'generaton'", "did you mean generation")),
    Case("builtin-data-typo", recipe={"data.train": "builtin:maths"},
         expect=("data.train: unknown built-in data 'builtin:maths'", "did you mean builtin:math")),
    Case("embedded-model-typo", recipe={"model.name": "embedded:smollm2-135m"},
         expect=("model.name: unknown embedded model", "did you mean smollm2-135m-instruct")),
    Case("goldenset-column-missing", command="train",
         files={"g.yaml": "name: g\nsource: g.jsonl\nmetrics: [exact_match]\n",
                "g.jsonl": '{"q": "1", "answer": "2"}\n'},
         recipe={"eval.goldensets": ["{tmp}/g.yaml"], "sweep.objective": "g/exact_match"},
         expect=("g.yaml", "prompt_field")),
    # sweep files
    Case("sweep-file-missing", recipe={"sweep.space": "{tmp}/none.yaml"},
         expect=("sweep.space", "not found")),
    Case("sweep-unknown-param", files={"s.yaml": "params:\n  trainer.learnig_rate: {type: "
                                       "float, low: 1.0e-4, high: 1.0e-3}\n"},
         recipe={"sweep.space": "{tmp}/s.yaml"}, expect=("s.yaml", "learnig_rate")),
    Case("sweep-low-above-high", files={"s.yaml": "params:\n  trainer.learning_rate: {type: "
                                        "float, low: 1.0e-2, high: 1.0e-3}\n"},
         recipe={"sweep.space": "{tmp}/s.yaml"}, expect=("s.yaml", "low")),
    Case("sweep-unknown-sampler", files={"s.yaml": "sampler: tpee\nparams:\n  adapter.r: "
                                         "{type: categorical, choices: [4, 8]}\n"},
         recipe={"sweep.space": "{tmp}/s.yaml"}, expect=("s.yaml", "sampler")),
    Case("sweep-yaml-malformed", files={"s.yaml": "params: {a: [\n"},
         recipe={"sweep.space": "{tmp}/s.yaml"}, expect=("s.yaml", "YAML")),
    # command line
    Case("cli-unknown-command", command="cli", argv=["trian", "x.yaml"], expect=("trian",)),
    Case("cli-recipe-missing", command="cli", argv=["train", "{tmp}/nope.yaml"],
         expect=("nope.yaml", "not found")),
    Case("cli-set-without-equals", command="cli", argv=["validate", "{recipe}", "--set",
                                                        "adapter.r"], expect=("--set",)),
    Case("cli-n-trials-not-int", command="cli", argv=["sweep", "{recipe}", "--n-trials", "x"],
         expect=("--n-trials",)),
    Case("cli-workers-zero", command="cli", argv=["sweep", "{recipe}", "--workers", "0"],
         expect=("--workers",)),
    Case("cli-storage-unknown", command="cli", argv=["sweep", "{recipe}", "--workers", "2",
                                                     "--storage", "postgress://u@h/db"],
         expect=("sweep.storage", "did you mean postgresql")),
    Case("cli-eval-model-missing", command="cli", argv=["eval", "./no/such/model",
                                                        "--goldenset", "{gs}"],
         expect=("model.name", "does not exist")),
]


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def _fill(value, subs: dict):
    if isinstance(value, str):
        for k, v in subs.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, list):
        return [_fill(v, subs) for v in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2(case, recipe_dict, tmp_path, capsys):
    import copy

    import mlflow
    subs = {"tmp": str(tmp_path), "gs": recipe_dict["eval"]["goldensets"][0]}
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    d = copy.deepcopy(recipe_dict)
    for k, v in case.recipe.items():
        _set(d, k, _fill(v, subs))
    path = tmp_path / "recipe.yaml"
    if isinstance(case.raw, bytes):
        path.write_bytes(case.raw)
    else:
        path.write_text(case.raw if case.raw is not None else yaml.safe_dump(d))
    subs["recipe"] = str(path)
    argv = _fill(case.argv, subs) if case.command == "cli" else [case.command, str(path)]
    code = cli.main(argv) if case.command != "cli" else _main_or_exit(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    print(f"CASE {case.id} | {lines[0].replace(str(tmp_path) + '/', '')}")
    for want in case.expect:
        assert _fill(want, subs) in lines[0], lines[0]
    if case.command != "cli":  # the file: the recipe, or the data / manifest / sweep file
        assert any(f"{n}:" in lines[0] for n in ["recipe.yaml", "builtin:math", *case.files])
    store = tmp_path / "mlflow.db"
    if store.exists():
        client = mlflow.MlflowClient(f"sqlite:///{store}")
        running = [r for e in client.search_experiments() for r in
                   client.search_runs([e.experiment_id]) if r.info.status == "RUNNING"]
        assert not running
        mlflow.set_tracking_uri(None)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.safetensors"))


def _main_or_exit(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's own errors exit through the harness's parser
        return e.code


def test_the_corpus_has_thirty_cases_at_least():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
