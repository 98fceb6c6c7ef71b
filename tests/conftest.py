"""Shared fixtures: a tiny Llama built from a config (seconds to train), tiny golden sets, and
recipes whose stores (MLflow, Optuna, outputs, reports) all live in tmp_path."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# xdist runs N test processes; each of them, and each harness process a test starts, would
# otherwise give torch one thread per core (tests/study/test_sweep.py on 2 workers and 2 cores: 161 s
# with the default, 134 s with a share each). Set before anything imports torch.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    from harness.train.distributed import cpu_threads
    os.environ["OMP_NUM_THREADS"] = cpu_threads(_WORKERS)
# the libraries whose deprecations are tasks: a DeprecationWarning or FutureWarning raised from
# them (or from the harness calling them) fails the test, but for harness.cli.KNOWN_WARNINGS
OURS = r"(transformers|trl|peft|optuna|mlflow|harness)(\..*)?$"


def pytest_configure(config):
    from harness.commands.cli import KNOWN_WARNINGS
    for category in ("DeprecationWarning", "FutureWarning"):
        config.addinivalue_line("filterwarnings", f"error::{category}:{OURS}")
    # a pruner reports each step once (the evaluation after training repeats the last step)
    config.addinivalue_line("filterwarnings", "error:The reported value is ignored:UserWarning")
    for message, category in KNOWN_WARNINGS:  # added later: they take precedence
        config.addinivalue_line("filterwarnings",
                                f"ignore:{message}:{category.__module__}.{category.__qualname__}")
# The longest tests (30-45 s each on a 2-core CI machine) start first: started last, one of them
# can keep a single xdist worker busy after the other has run out of tests.
LONGEST = ("test_a_trial_killed_after_its_checkpoint_resumes_from_it",
           "test_the_shipped_math_task_scores_as_numeric_accuracy_does",
           "test_two_workers_two_sweeps_in_a_row",
           "test_the_default_sweeps_work_matches_the_documented_ledger",
           "test_sigterm_to_a_two_worker_sweep",
           "test_sweep_trials_metrics_and_compare_view_in_chromium",
           "test_a_sweep_of_two_process_trials_prunes_on_every_rank")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: not item.name.startswith(LONGEST))  # a stable sort


SHARED = Path(os.environ.get("HARNESS_SHARED", ROOT.parent / "shared"))
TOKENIZER = SHARED / "anchors" / "smollm2-135m"  # SmolLM2's tokenizer and chat template
# a conversation of three assistant turns, a tool's result before the last (tests/data/test_turns,
# tests/train/test_assistant_loss and bench/turn_masks.py count its trained tokens per turn)
CONVERSATION = [
    {"role": "system", "content": "You are a careful calculator."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "12 + 30 = 42"},
    {"role": "user", "content": "Now multiply that by 3 with the tool."},
    {"role": "assistant", "content": "multiply(42, 3)"},
    {"role": "tool", "content": "126"},
    {"role": "assistant", "content": "42 x 3 = 126"},
]
# SmolLM2's chat template with {% generation %} around what follows each assistant turn's
# generation prompt (content, <|im_end|> and the newline closing the turn): the same text as
# SmolLM2's own, so TRL's marker path and the harness's own mask run on one rendering
MARKED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endgeneration %}{% else %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _tiny_llama(out: Path, initializer_range: float) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights of that std,
    saved in `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    assert TOKENIZER.is_dir(), f"tests need {TOKENIZER} (../shared beside the repo)"
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, initializer_range=initializer_range)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights (Llama's
    std 0.02: near-uniform next-token odds, so a loss starts near ln(vocabulary))."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"), 0.02)


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory) -> str:
    """The tiny Llama with weights of std 0.3: its greedy continuations differ from prompt to
    prompt and from token to token. The std-0.02 one answers every prompt with the same
    repeated newline, so two decoding paths compared on it agree whatever either does."""
    return _tiny_llama(tmp_path_factory.mktemp("lively-llama"), 0.3)


def small_goldenset(tmp_path, shipped: str, manifest: str, rows: int = 4) -> str:
    """The first rows of a shipped golden set's JSONL under tmp_path, with `manifest` (YAML text
    whose source is <stem>.jsonl) beside it."""
    lines = (ROOT / "goldensets" / shipped).read_text().splitlines()[:rows]
    (tmp_path / shipped).write_text("\n".join(lines) + "\n")
    path = tmp_path / shipped.replace(".jsonl", ".yaml")
    path.write_text(f"source: {shipped}\n{manifest}")
    return str(path)


MATH_MANIFEST = ("name: math\ntask: math\nmax_new_tokens: 6\n"
                 "metrics: [numeric_accuracy, answer_format, perplexity]\n")


@pytest.fixture
def tiny_goldenset(tmp_path) -> str:
    """Four rows of the real math golden set, short generations."""
    return small_goldenset(tmp_path, "math.jsonl", MATH_MANIFEST)


@pytest.fixture
def pref_goldenset(tmp_path) -> str:
    """Four rows of the math preference golden set."""
    return small_goldenset(tmp_path, "math_preferences.jsonl",
                           "name: prefs\ntask: preference\nprompt_field: prompt\n"
                           "metrics: [pairwise_accuracy, score_margin]\n")


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store as MLflow makes it, before any run. Making one runs MLflow's
    migrations (about a second of CPU): each recipe's store starts as a copy of this one. Tests
    that name a store of their own (the scenario matrix, the CLI's) still have MLflow make it."""
    import mlflow
    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def tiny_recipe(folder: Path, model_dir: str, empty_store: Path) -> dict:
    """A complete recipe for the tiny model, every store (MLflow's a copy of `empty_store`)
    under `folder`: `recipe_dict`'s, and a module fixture's that trains once for several
    tests."""
    import shutil
    shutil.copyfile(empty_store, folder / "mlflow.db")
    goldenset = small_goldenset(folder, "math.jsonl", MATH_MANIFEST)
    space = folder / "space.yaml"
    space.write_text("n_trials: 2\nsampler: random\nseed: 0\nparams:\n"
                     "  trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n"
                     "  adapter.r: {type: categorical, choices: [4, 8]}\n")
    return {
        "name": "tiny",
        "model": {"name": model_dir},
        "adapter": {"r": 4},  # alpha follows r (2 x r), as a rank sweep wants
        "data": {"train": "builtin:math", "builtin_rows": 8},
        "trainer": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 128},
        "eval": {"goldensets": [goldenset], "batch_size": 4, "forgetting_guard": None},
        "sweep": {"space": str(space), "objective": "math/numeric_accuracy",
                  "storage": f"sqlite:///{folder}/optuna.db"},
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db"},
        "output_dir": str(folder / "outputs"),
        "reports_dir": str(folder / "reports"),
    }


@pytest.fixture
def recipe_dict(tmp_path, tiny_model_dir, empty_mlflow_store) -> dict:
    """A complete recipe for the tiny model; every store under tmp_path."""
    return tiny_recipe(tmp_path, tiny_model_dir, empty_mlflow_store)


@pytest.fixture
def client(recipe_dict):
    """An MlflowClient on the recipe's store (the fluent API's URI set to it meanwhile)."""
    import mlflow
    mlflow.set_tracking_uri(recipe_dict["tracking"]["uri"])
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def write_recipe(tmp_path):
    def write(data: dict, name: str = "recipe.yaml") -> str:
        import yaml
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data))
        return str(p)
    return write


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# A PostgreSQL server for concurrency tests: HARNESS_TEST_POSTGRES (a SQLAlchemy URL to its
# maintenance database; .ci/run installs and starts one) or the local socket's default cluster.
PG = os.environ.get("HARNESS_TEST_POSTGRES",
                    "postgresql+psycopg2:///postgres?host=/var/run/postgresql")


@pytest.fixture
def pg_database():
    """A factory of fresh, empty PostgreSQL databases, dropped after the test."""
    import uuid

    import sqlalchemy
    engine = sqlalchemy.create_engine(PG, isolation_level="AUTOCOMMIT")
    made = []

    def make() -> str:
        name = f"harness_test_{uuid.uuid4().hex[:10]}"
        with engine.connect() as c:
            c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return str(engine.url.set(database=name).render_as_string(hide_password=False))
    yield make
    with engine.connect() as c:
        for name in made:
            c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def wait_until_up(proc, url: str, command: str) -> None:
    """Until `url`/health answers (up to ~60 s, over 15x the 3.5 s a server takes to start on
    the 2-core CPU, docs/benchmarks.md); kills `proc` and raises if it never does."""
    import time
    import urllib.request
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"harness {command} did not start")


@contextlib.contextmanager
def harness_server(command: str, *args: str):
    """`harness ui|server ARGS` on a free port of 127.0.0.1, once its /health answers:
    yields (url, the first line it printed); terminated afterwards."""
    import socket
    import subprocess
    import sys
    import threading
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "harness", command, *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    first_line = proc.stdout.readline()
    # keep reading, so a chatty server never blocks on a full pipe
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    wait_until_up(proc, url, command)
    try:
        yield url, first_line
    finally:
        proc.terminate()
        proc.wait(timeout=30)
