"""The run context: one command's clock (harness.core.timing), its ledger (harness.core.ledger)
and its hold on Python's garbage collector, made fresh for each command by the CLI.

`harness.commands.cli.main` opens `command()` around each command: a new `RunContext` that is
current until the command returns, so two commands in one process (the tests call `cli.main`
again and again) never share seconds or counts. The harness reads it with `current()`, and
the two things nearly everything does with it have their own names: `timed(phase)` and
`count(what, n)`.

Why a context variable rather than a parameter: the clock and the ledger are written from some
forty places across six layers (every MLflow write in tracking, the decoding loop in eval,
phases in pipeline, study and commands), many of them reached through objects the harness does
not call itself (TRL's Trainer and its callbacks, Optuna's objective, a Prepared shared by a
sweep's trials). Passing a context through every one of those signatures would change most of
the package's functions for no reader's benefit. A `ContextVar` set by the CLI's `with` block
is the parameter's equivalent: scoped to the block, restored when it ends, separate per thread,
and never rebound behind a caller's back. Code run outside any command (a test or a notebook
calling `prepare` or `run_sweep` itself) gets one context made on its first use in that thread
and kept there, as one interactive session's.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from harness.core.beside import Beside
from harness.core.ledger import Ledger
from harness.core.timing import Clock


class Collector:
    """Python's cyclic garbage collector as a command holds it (`collector_paused`).

    Set-up (imports, stores, tokenizer, rows, golden sets) makes millions of objects that live
    as long as the command and little garbage: each automatic full collection meanwhile
    rescans them all (~0.4 s apiece). So a preparing command starts with the collector off,
    and set-up ends with `resume_frozen()`."""

    def __init__(self, paused: bool = False):
        self.paused = paused

    def resume_frozen(self) -> None:
        """The collector on again, with everything alive now frozen: the full collection after
        each trial (which returns a model's memory) then scans only what came after, not the
        objects of torch and transformers. Does nothing unless paused (a command that did not
        pause it, a second `prepare` in one command, a caller outside the CLI)."""
        if not self.paused:
            return
        self.paused = False
        gc.enable()
        gc.collect()
        gc.freeze()


@contextmanager
def collector_paused(pause: bool = True) -> Iterator[Collector]:
    """The collector off inside the block (`pause`), and on again when the block ends, however
    it ends, if `Collector.resume_frozen` did not turn it on first."""
    collector = Collector(paused=pause and gc.isenabled())
    if collector.paused:
        gc.disable()
    try:
        yield collector
    finally:
        if collector.paused:
            collector.paused = False
            gc.enable()


@dataclass
class RunContext:
    """What one command times and counts, its hold on the collector, and its writer thread."""
    clock: Clock = field(default_factory=Clock)
    ledger: Ledger = field(default_factory=Ledger)
    collector: Collector = field(default_factory=Collector)  # not paused unless the CLI's is
    beside: Beside = field(default_factory=Beside)


_CURRENT: ContextVar[RunContext | None] = ContextVar("harness_run_context", default=None)


@contextmanager
def command(pause_collector: bool = False,
            ctx: RunContext | None = None) -> Iterator[RunContext]:
    """One command's context, current inside the block: `ctx` (a test that reads the counts
    afterwards passes its own), else a fresh one whose clock starts now. `pause_collector`:
    the collector stays off until set-up calls `ctx.collector.resume_frozen()`."""
    ctx = ctx or RunContext()
    with collector_paused(pause_collector) as collector:
        ctx.collector = collector
        token = _CURRENT.set(ctx)
        try:
            yield ctx
            wait_beside()  # a command that did not wait: its writes, and any error, first
        finally:
            try:
                ctx.beside.shut()  # after an error: what was submitted is still written
            finally:
                _CURRENT.reset(token)


def current() -> RunContext:
    """The running command's context; outside any command, this thread's own (made once)."""
    ctx = _CURRENT.get()
    if ctx is None:
        ctx = RunContext()
        _CURRENT.set(ctx)
    return ctx


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """The block's seconds counted to `phase` on the current command's clock."""
    with current().clock.timed(phase):
        yield


def beside(fn) -> None:
    """`fn()` on the current command's writer thread (harness.core.beside), timed and counted on
    the writer's own clock and ledger until `wait_beside` folds them into the command's; at
    once, here, outside a sweep's trials (`Beside.trials`), where nothing would overlap it."""
    writer = current().beside
    if not writer.in_trials:
        return fn()
    there = RunContext(clock=writer.clock, ledger=writer.ledger)

    def run():
        with command(ctx=there):
            fn()
    writer.submit(run)


def wait_beside() -> None:
    """Everything the current command's writer thread was given, written; its counts added to
    the command's ledger, its seconds to the clock's `beside` ones, and the time this waited
    counted to the `evaluations` phase (the only work it does now). Raises its first error."""
    ctx = current()
    if not ctx.beside.given:
        return
    with timed("evaluations"):
        folded = ctx.beside.wait()
    for what, n in folded.counts.items():
        ctx.ledger.add(what, n)
    for phase, seconds in folded.seconds.items():
        ctx.clock.beside[phase] += seconds


def count(what: str, n: int = 1) -> None:
    """`n` more of `what` (a harness.core.ledger.COUNTS key) on the current command's ledger."""
    current().ledger.add(what, n)
