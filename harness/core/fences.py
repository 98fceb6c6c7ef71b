"""The library versions each patch of a private internal was tested with, in one place.

The GPU fast path and a few sweep-wide savings lean on internals no library promises to keep:
TRL's padding-free batch format and its fused LM head, transformers' RMSNorm classes, PyTorch's
allocator settings and CUDA generator state. A release may change them without a deprecation.
Each patch asks `allowed(name)` first; outside the versions below it is skipped, with one line
saying why, and the harness takes the plain path (slower, never wrong).

To widen a range: run the tests that exercise the patch (marked `fenced`; `make test-newest` runs
them on the newest releases; `bench/newest_wheels.sh` for the GPU-only ones) on the new release,
then edit TESTED. `harness fences` says which are on here.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from importlib.metadata import PackageNotFoundError, version

#: patch -> {package: versions it was tested with}. Tested so far: the CPU suite with torch 2.13,
#: transformers 5.24, TRL 1.16, datasets 5.2; the GPU benchmarks and matrix with torch 2.11,
#: transformers 5.17, TRL 1.16 (H100/H200 images, 2026-11).
TESTED: dict[str, dict[str, str]] = {
    # graphs.py: the backbone's forward replaced by captured graphs; TRL's padding-free batches
    # (cu_seq_lens_*, max_length_*) reshaped; the CUDA generator's state after a failed capture
    "cuda_graphs": {"torch": ">=2.11,<2.14", "transformers": ">=5.17,<5.25", "trl": ">=1.16,<1.17"},
    # kernels.py: transformers' Llama/Mistral/Qwen RMSNorm classes swapped for subclasses running
    # F.rms_norm, which kernelizing (5.25, the kernels package) is told to skip; test_kernels
    # passed on 5.24 (no kernels) and on 5.25 with kernels 0.19.1 (2026-12-08). kernels is not
    # fenced: each transformers release pins its minor (5.25: <0.20)
    "fused_norm": {"transformers": ">=5.17,<5.26"},
    # models.py: torch._C._accelerator_setAllocatorSettings("expandable_segments:True")
    "allocator_settings": {"torch": ">=2.11,<2.14"},
    # train.padding_free: TRL's rule for when SFTTrainer flattens a batch, written out here
    "padding_free_rule": {"trl": ">=1.16,<1.17"},
    # train.scoring_ready: SFTTrainer's fused LM head wrapper removed from a trained model
    "fused_lm_head": {"trl": ">=1.16,<1.17"},
    # train.PreparedRows: rows TRL prepared handed to the next trainer (skip_prepare_dataset)
    "prepared_rows": {"trl": ">=1.16,<1.17", "datasets": ">=5.0,<6"},
    # records.py: finished traces handed to the tracking store's start_trace / log_spans
    # (TracingClient.store) with MLflow's trace metadata helpers, instead of genai.evaluate;
    # 3.18.0 passed tests/tracking/test_records.py (both writers) and the ledger (2026-12-07)
    "trace_store": {"mlflow": ">=3.17,<3.19"},
}


#: patches that run on a GPU only: a CPU (CI) checks their versions, and the GPU run
#: (`bench/newest_wheels.sh`) tests them before their range is widened
GPU_ONLY = frozenset({"cuda_graphs", "allocator_settings"})

#: GPU-only patches off on exactly these newest releases, whose GPU check is owed: the CI check
#: on the newest releases says so and passes for them alone, so it goes on failing for any other
#: fence a release turns off; a release past these versions, or the patch widened while still
#: listed here, fails it again. Each entry says since when and why it waits.
OWED_GPU_CHECK: dict[str, dict[str, str]] = {
    # 2026-12-08: transformers 5.25.0 out; the session's device time ran out before
    # bench/newest_wheels.sh's run (the CPU tests pass on 5.25; graphs run on a GPU only)
    "cuda_graphs": {"transformers": "5.25.0"},
}


def installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


@dataclasses.dataclass(frozen=True)
class PackageVersion:
    """One package a patch touches, as installed here, against the versions it was tested with."""
    package: str
    have: str | None  # None: not installed, which no fence holds against
    tested: str
    inside: bool

    def __str__(self) -> str:
        where = "not installed" if self.have is None else \
            f"{self.have} {'in' if self.inside else 'OUTSIDE'}"
        return f"{self.package} {where} {self.tested}"


def versions(patch: str) -> tuple[PackageVersion, ...]:
    """Each package `patch` touches, in TESTED's order."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    rows = []
    for package, spec in TESTED[patch].items():
        have = installed(package)
        # a local build (2.13.0+cpu) is its release
        inside = have is None or Version(Version(have).base_version) in SpecifierSet(spec)
        rows.append(PackageVersion(package, have, spec, inside))
    return tuple(rows)


def _outside(patch: str) -> tuple[str, str, str] | None:
    """(package, installed version, tested range) of the first package outside its range."""
    out = next((v for v in versions(patch) if not v.inside), None)
    return out and (out.package, out.have, out.tested)


def why_not(patch: str) -> str | None:
    """None when every package the patch touches is within its tested versions; else why not."""
    out = _outside(patch)
    return out and f"{out[0]} {out[1]} is outside the versions it was tested with ({out[2]})"


#: the command that installs the versions CI tested (constraints.txt at the checkout's root)
TESTED_SET = "pip install -c constraints.txt -e ."


@functools.cache
def allowed(patch: str) -> bool:
    """Whether to apply `patch`; says once on stderr why not (harness.core.fences)."""
    why = why_not(patch)
    if why:
        print(f"harness: {patch.replace('_', ' ')} off: {why} (harness/core/fences.py)",
              file=sys.stderr)
    return why is None


def off_line() -> str | None:
    """One line naming every patch this install turns off and the command that brings the
    tested versions back, or None when all are on: said before a run, and by validate, so a
    user learns of a slower plain path before spending the time."""
    off = {p: out for p in TESTED if (out := _outside(p))}
    if not off:
        return None
    # one reason a package: several patches usually share it
    reasons = dict.fromkeys(f"{package} {have}" for package, have, _ in off.values())
    return (f"fast paths off, outside the versions they were tested with ({', '.join(reasons)}): "
            f"{', '.join(off)}; the tested set: {TESTED_SET}")


@dataclasses.dataclass(frozen=True)
class Fence:
    """A patch on this install: on or off, each package it touches, where it can run."""
    patch: str
    versions: tuple[PackageVersion, ...]
    gpu_only: bool

    @property
    def on(self) -> bool:
        return all(v.inside for v in self.versions)

    @property
    def owed(self) -> bool:
        """Off only for the releases OWED_GPU_CHECK lists for it: its GPU check is owed."""
        listed = OWED_GPU_CHECK.get(self.patch)
        return bool(listed) and not self.on and self.gpu_only and all(
            listed.get(v.package) == v.have for v in self.versions if not v.inside)

    def line(self) -> str:
        where = "; GPU only (on a CPU: versions checked, not run)" if self.gpu_only else ""
        owed = "; its GPU check owed (fences.OWED_GPU_CHECK)" if self.owed else ""
        return (f"{self.patch:<19} {'on ' if self.on else 'OFF'}  "
                f"{', '.join(map(str, self.versions))}{where}{owed}")


def report() -> list[Fence]:
    """Every patch in TESTED on this install (`harness fences`)."""
    return [Fence(p, versions(p), p in GPU_ONLY) for p in TESTED]


def verdict(fences: list[Fence]) -> str | None:
    """None when every fence is on; else the line naming the ones off, and what widens each: a
    CPU one after its tests pass on the new release, a GPU one after the GPU run."""
    off = [f for f in fences if not f.on and not f.owed]
    stale = [f.patch for f in fences if f.on and OWED_GPU_CHECK.get(f.patch) and all(
        installed(package) == have for package, have in OWED_GPU_CHECK[f.patch].items())]
    if not off and not stale:
        return None
    cpu = [f.patch for f in off if not f.gpu_only]
    gpu = [f.patch for f in off if f.gpu_only]
    parts = ([f"{', '.join(cpu)} (widen TESTED once their tests pass on these releases)"]
             if cpu else []) + \
        ([f"{', '.join(gpu)} (GPU only: widen after the GPU check, bench/newest_wheels.sh)"]
         if gpu else [])
    if stale:  # widened: the entry that let the check pass must go with it
        parts.append(f"{', '.join(stale)} on, still in OWED_GPU_CHECK (remove it)")
    return f"fences off on these releases: {'; '.join(parts)}"
