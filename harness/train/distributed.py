"""Data-parallel training on the engine users already have: `harness train RECIPE --processes N`
relaunches itself under torchrun (torch.distributed.run); TRL's trainer then runs DDP through
accelerate (NCCL on GPUs, gloo on a CPU). Rank 0 alone scores, logs to MLflow and writes the
report; every rank trains."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

_machine_gpus: list[str] | None = None  # CUDA_VISIBLE_DEVICES names, before setup() pins one
_control = None  # the gloo group trial values and pruning decisions travel on


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def setup() -> None:
    """Under torchrun: this rank's GPU becomes the current device, so 'cuda' means it. Else
    one GPU (pin_first_gpu)."""
    import torch
    gpu_ids()
    if world_size() > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        pin_first_gpu()


def pin_first_gpu() -> None:
    """One process on a machine of several GPUs trains on the first: Trainer would wrap the
    model in nn.DataParallel, which TRL refuses (and DDP outruns). CUDA reads
    CUDA_VISIBLE_DEVICES once, when it starts, and building a TRL config (bf16 checks) starts
    it: the CLI calls this first thing. Counting GPUs here goes through NVML, which does not
    start CUDA. The machine's GPUs stay known (gpu_ids) for the workers a sweep hands them to."""
    if world_size() > 1 or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    import torch
    ids = gpu_ids()
    if len(ids) > 1:
        if torch.cuda.is_initialized():  # too late to take effect: say so rather than crash later
            print("[harness] warning: CUDA started before the harness could keep one GPU; set "
                  "CUDA_VISIBLE_DEVICES", file=sys.stderr, flush=True)
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[0]
        n = len(ids)
        print(f"[harness] {n} GPUs visible: this process uses GPU 0; `harness train --processes "
              f"{n}` trains on all of them, `harness sweep --workers {n}` runs a trial on each",
              file=sys.stderr, flush=True)


def gpu_ids() -> list[str]:
    """The GPUs this process was given (CUDA_VISIBLE_DEVICES, or all), as they were before
    setup() kept one: what a sweep hands out to its workers."""
    global _machine_gpus
    if _machine_gpus is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            _machine_gpus = [x.strip() for x in visible.split(",") if x.strip()]
        else:
            import torch
            _machine_gpus = [str(i) for i in range(torch.cuda.device_count())]
    return _machine_gpus


def command(argv: list[str], processes: int) -> list[str]:
    """`harness <argv>`, under torchrun when it takes several processes."""
    if processes == 1:
        return [sys.executable, "-m", "harness", *argv]
    return [sys.executable, "-m", "harness.train.distributed", "--standalone",
            f"--nproc-per-node={processes}", "-m", "harness", *argv]


def torchrun(args: list[str]) -> int:
    """torchrun (torch.distributed.run) with `args`; returns the first failed rank's exit code.
    torchrun's own CLI answers a rank's failure with its ChildFailedError traceback on the
    terminal, after the rank has printed its one line (and written its crash log)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run
    try:
        run(parse_args(args))
    except ChildFailedError as e:
        rank, first = e.get_first_failure()  # the root cause: the others were stopped after it
        if first.exitcode >= 0:
            return first.exitcode or 1
        # killed by a signal: it printed nothing, so say it here (torchrun's log line is terse)
        sig = -first.exitcode
        why = " (SIGKILL: out of memory, or killed)" if sig == 9 else ""
        print(f"error: rank {rank} was killed by signal {sig}{why}; the other ranks were "
              "stopped", file=sys.stderr, flush=True)
        return 128 + sig
    return 0


def cpu_threads(processes: int) -> str:
    """OMP_NUM_THREADS for each of `processes` processes sharing this machine's cores: the
    caller's value if set, else a share of the cores. torch's default, a thread per core in
    every process, spins them against each other (2 sweep workers on 2 cores: 0.77x one
    worker's trials an hour; a share each: 1.18x, docs/benchmarks.md)."""
    return os.environ.get("OMP_NUM_THREADS") or \
        str(max(1, len(os.sched_getaffinity(0)) // processes))


def launch(argv: list[str], processes: int, env: dict | None = None) -> int:
    """`harness <argv>` in `processes` processes on this machine, one GPU each where there are
    GPUs (`env` on top of this process's). Returns torchrun's exit code."""
    return subprocess.call(command(argv, processes), env={
        **os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})})


def join() -> None:
    """Meet the other ranks now (a collective): the group's rendezvous times out (30 min),
    the broadcasts after it wait for as long as rank 0 needs (share)."""
    _control_group()


def _control_group():
    global _control
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    if _control is None:
        if not dist.is_initialized():  # accelerate reuses this group when the trainer starts
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                    timeout=timedelta(minutes=30))
        _control = dist.new_group(backend="gloo", timeout=timedelta(days=7))
    return _control


def share(obj=None):
    """Rank 0's `obj`, on every rank (a collective: all ranks call it). On gloo with a long
    timeout, so the other ranks may wait for as long as rank 0 scores a model; a NCCL
    collective would time out."""
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def params(config, trainer=None) -> dict:
    """What a reader needs to compare runs across world sizes; with the `trainer`, what its DDP
    wrapper was built with (accelerate's DDP kwargs handler, read when train() wraps the model)."""
    n = world_size()
    out = {"distributed/world_size": n,
           "distributed/effective_batch_size": config.per_device_train_batch_size * n
           * config.gradient_accumulation_steps}
    handler = _ddp_handler(trainer)
    for name in ("gradient_as_bucket_view", "broadcast_buffers"):
        if hasattr(handler, name) and n > 1:
            out[f"distributed/{name}"] = getattr(handler, name)
    return out


def _ddp_handler(trainer):
    """The DDP kwargs the Trainer built from its ddp_* fields (accelerate's
    DistributedDataParallelKwargs), which accelerate reads when train() wraps the model."""
    return getattr(getattr(trainer, "accelerator", None), "ddp_handler", None)


def gradients_in_buckets(trainer) -> None:
    """DDP keeps each gradient inside its all-reduce bucket (gradient_as_bucket_view): the
    reduced bucket is then the `.grad` the optimizer reads, so the gradients are held once, not
    twice, and not copied back out of the buckets after each all-reduce (for LoRA on all
    linear layers, ~420 small copies a step; at 135M parameters no speed difference showed,
    docs/benchmarks.md). TrainingArguments has no field for it; the DDP kwargs handler has.
    Called unless the device plan's `bucket_views` is off (bench/train_speed.py A/Bs it)."""
    handler = _ddp_handler(trainer)
    if world_size() > 1 and hasattr(handler, "gradient_as_bucket_view"):
        handler.gradient_as_bucket_view = True


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


def finish() -> None:
    """Leave the process group (every rank calls it): a clean exit, without NCCL's warning."""
    global _control
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None


if __name__ == "__main__":  # command(): torchrun, ending in an exit code instead of a traceback
    sys.exit(torchrun(sys.argv[1:]))
