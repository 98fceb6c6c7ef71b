"""What the GPU benchmarks share: a same-shape model with random weights (real weights cannot
travel to the GPU machine), built from a config folder such as ../shared/anchors/smollm2-135m,
and the MLflow tracking server that parallel workers log through."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def random_model(config_dir: str, out: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(config_dir)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def scoring_model(name: str, config: str | None = None):
    """(model, tokenizer, device plan) as the harness scores `name` on this machine (fp32 on a
    CPU, bf16 on a GPU); `config`: a config folder, random weights of that shape instead."""
    import tempfile

    from harness import models
    from harness.config import recipe
    if config:
        name = random_model(config, tempfile.mkdtemp())
    spec = recipe.ModelSpec(name=name)
    plan = models.device_plan(spec)
    return models.load_model(spec, plan), models.load_tokenizer(spec), plan


def server(root: Path, port: int):
    """`harness server` on a SQLite store under `root`: the MLflow tracking server parallel
    workers need (SQLite itself would be written by several processes at once)."""
    import urllib.request
    proc = subprocess.Popen([sys.executable, "-m", "harness", "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--port", str(port),
                             "--artifacts-destination", str(root / "mlartifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("harness server did not start")
