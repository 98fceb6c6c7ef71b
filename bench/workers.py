"""Trials per hour with one sweep worker against two, on one machine, through PostgreSQL.

Both arms run the same study shape (fresh Optuna storage and MLflow store per arm, each a new
PostgreSQL database): `harness sweep --workers N` with N = 1 and 2, every worker limited to one
CPU thread (OMP_NUM_THREADS=1), so two workers use the two cores of this machine. The tiny model
is a SmolLM2-shaped Llama with few layers, trained a fixed number of steps per trial.

    python bench/workers.py --pg postgresql+psycopg2:///postgres?host=/var/run/postgresql \\
        --trials 8 --steps 40
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(out: Path, tokenizer: str) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def database(pg: str) -> str:
    import sqlalchemy
    engine = sqlalchemy.create_engine(pg, isolation_level="AUTOCOMMIT")
    name = f"harness_bench_{uuid.uuid4().hex[:8]}"
    with engine.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    return engine.url.set(database=name).render_as_string(hide_password=False)


def arm(workers: int, model: str, pg: str, trials: int, steps: int, root: Path) -> float:
    import yaml
    space = root / f"space-{workers}.yaml"
    space.write_text(yaml.safe_dump({"n_trials": trials, "sampler": "random", "params": {
        "trainer.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}}))
    recipe = root / f"recipe-{workers}.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": f"workers-{workers}", "model": {"name": model}, "adapter": {"r": 8},
        "data": {"builtin_rows": 64},
        "trainer": {"max_steps": steps, "per_device_train_batch_size": 8, "max_length": 160},
        "eval": {"goldensets": [str(ROOT / "goldensets/math.yaml")], "max_examples": 8,
                 "max_new_tokens": 8, "forgetting_guard": None},
        "sweep": {"space": str(space), "storage": database(pg)},
        "tracking": {"uri": database(pg)},
        "output_dir": str(root / "out"), "reports_dir": str(root / "reports")}))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "sweep", str(recipe), "--workers",
                    str(workers)] if workers > 1 else
                   [sys.executable, "-m", "harness", "sweep", str(recipe)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", default="postgresql+psycopg2:///postgres?host=/var/run/postgresql")
    ap.add_argument("--tokenizer", default=str(ROOT.parent / "shared/anchors/smollm2-135m"))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        model = tiny_model(root / "model", args.tokenizer)
        one = arm(1, model, args.pg, args.trials, args.steps, root)
        two = arm(2, model, args.pg, args.trials, args.steps, root)
    per_hour = lambda s: args.trials / s * 3600  # noqa: E731
    print(f"1 worker: {one:.1f} s for {args.trials} trials ({per_hour(one):.0f} trials/h)")
    print(f"2 workers: {two:.1f} s for {args.trials} trials ({per_hour(two):.0f} trials/h)")
    print(f"speed-up: {one / two:.2f}x (each worker one CPU thread)")


if __name__ == "__main__":
    main()
