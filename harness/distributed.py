"""Data-parallel training on the engine users already have: `harness train RECIPE --processes N`
relaunches itself under torchrun (torch.distributed.run); TRL's trainer then runs DDP through
accelerate (NCCL on GPUs, gloo on a CPU). Rank 0 alone scores, logs to MLflow and writes the
report; every rank trains."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def setup() -> None:
    """Under torchrun: this rank's GPU becomes the current device, so 'cuda' means it."""
    if world_size() > 1:
        import torch
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def launch(argv: list[str], processes: int) -> int:
    """`harness <argv>` in `processes` processes on this machine, one GPU each where there are
    GPUs. Returns torchrun's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={processes}", "-m", "harness", *argv]
    return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS":
                                     os.environ.get("OMP_NUM_THREADS", "1")})


def params(config) -> dict:
    """What a reader needs to compare runs across world sizes."""
    n = world_size()
    return {"distributed/world_size": n,
            "distributed/effective_batch_size": config.per_device_train_batch_size * n
            * config.gradient_accumulation_steps}


def weights_in_sync(model) -> bool:
    """Whether every rank ended with the same trainable weights (a collective: all ranks call
    it). DDP keeps replicas equal; a mismatch means a desynchronised run."""
    import torch
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    mine = torch.tensor(list(h.digest()[:8]), dtype=torch.int64)
    if dist.get_backend() == "nccl":
        mine = mine.cuda()
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return all(torch.equal(everyone[0], t) for t in everyone)
