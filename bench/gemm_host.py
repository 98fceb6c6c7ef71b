"""Host-side cost of one GEMM as the harness's packed batches issue them, by how many distinct
token counts (M) a run sees. A LoRA step of a small model is bound by the CPU that launches its
~1,700 GEMMs, not by the GPU that runs them; if the BLAS library's per-call set-up depends on
the shape being new, padding each packed batch to a multiple (TRL's `pad_to_multiple_of`) cuts it.

    python bench/gemm_host.py [--calls 3000]

Prints microseconds a call (wall over the calls, CUDA-synchronized once at the end) for LoRA-A
shaped GEMMs ([M, 576] x [576, 16], a few microseconds of GPU work, so the host sets the pace),
with M fixed, M drawn from 4 values (multiples of 256), and M new on every call, through cuBLAS
and through cuBLASLt, beside an elementwise add (one launch, no GEMM).
"""
from __future__ import annotations

import argparse
import random
import time


def per_call_us(op, xs: list) -> float:
    import torch
    for x in {id(x): x for x in xs}.values():  # each shape once before the clock
        op(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for x in xs:
        op(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / len(xs) * 1e6


def main() -> None:
    import torch
    import torch.nn.functional as F
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    rng = random.Random(0)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    pool = {m: torch.randn(1, m, 576, device="cuda", dtype=torch.bfloat16)
            for m in range(15000, 16385, 8)}
    one = [pool[16384]] * args.calls
    four = [pool[rng.choice([15616, 15872, 16128, 16384])] for _ in range(args.calls)]
    new = [pool[m] for m in rng.sample(sorted(pool), len(pool))] * (args.calls // len(pool) + 1)
    a = torch.randn(16, 576, device="cuda", dtype=torch.bfloat16)
    arms = {"add (a launch, no GEMM)": (lambda x: x.add(1.0), one)}
    for lib in ("cublas", "cublaslt"):
        arms.update({f"{lib}: one M": (lib, one), f"{lib}: 4 Ms (x256)": (lib, four),
                     f"{lib}: a new M each call": (lib, new[:args.calls])})
    for name, (op, xs) in arms.items():
        if isinstance(op, str):
            torch.backends.cuda.preferred_blas_library(op)
            op = lambda x: F.linear(x, a)  # noqa: E731  LoRA A: [M, 576] x [576, 16]
        print(f"{name:32} {per_call_us(op, xs):7.1f} us a call ({len({id(x) for x in xs})} "
              "shapes)", flush=True)


if __name__ == "__main__":
    main()
