"""Host work done beside the command's own: one thread that writes what nothing waits for (a
trial's MLflow evaluation records) while the next trial trains, so the GPU does not idle on the
host's writes.

The thread runs only while its window is open: while a trainer steps (harness.train.steps
opens it after the first steps and closes it when training ends), where the training thread
mostly waits on the device, and while the command waits for it. Free to run at any time, its
Python work shared the interpreter's lock with the next trial's set-up (building the trainer,
capturing CUDA graphs) and slowed that as much as it saved (H100, 135M shape, 3 trials,
2026-12-08: the training phase 27.3 -> 33.9 s, records on the critical path 5.8 -> 3.0 s).

What runs here is timed and counted on a clock and ledger of its own (its seconds overlap the
command's, so they are not phases of its wall time) and folded into the command's when the
command waits for it: `wait()` is the one place that blocks on it, and it re-raises the first
error the thread met, so a failed write is never silent. The command waits before it reads what
the thread wrote (the chosen trial's records, the report) and before it exits; a process killed
first leaves an evaluation run without its `harness.evaluations.<side>` tag, which the next
start notices and writes again (harness.pipeline.run).

Only work that touches no process-wide state may go here: MLflow's client calls by run id
(its fluent run stack is per thread). `mlflow.genai.evaluate` swaps stdout and Python's global
`random` for its block, so the plain records path stays on the command's thread.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness.core.ledger import Ledger
from harness.core.timing import Clock


@dataclass
class Folded:
    """What `wait` hands the command: the thread's seconds per phase and counts since the last
    wait (the command times its own waiting)."""
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class Beside:
    """One writer thread of a command (on its run context, harness.core.context), started on
    the first `submit`."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self.clock, self.ledger = Clock(), Ledger()
        self._window = threading.Event()  # closed: submitted work waits
        self.in_trials = False

    @contextmanager
    def trials(self) -> Iterator[None]:
        """A sweep's trials: work given to the writer inside waits for its window (a trainer's
        steps, or the command waiting). Outside, there is no next trial to overlap and
        harness.core.context.beside does the work at once, on the command's thread."""
        self.in_trials = True
        self.close()
        try:
            yield
        finally:
            self.in_trials = False
            self.open()

    def open(self) -> None:
        self._window.set()

    def close(self) -> None:
        """Work not started yet waits for the window to open again (a write already running
        finishes)."""
        self._window.clear()

    def _when_open(self) -> None:
        # a process whose main thread has ended without waiting (no command around it) writes
        # at once rather than hold the interpreter's exit, which joins this thread
        while not self._window.wait(0.5) and threading.main_thread().is_alive():
            pass

    def submit(self, fn: Callable[[], None]) -> None:
        """`fn()` on the writer thread once its window is open, after what was submitted before
        it (harness.core.context.beside makes `fn` time and count on this writer's clock and
        ledger)."""
        if self._pool is None:  # concurrent.futures joins it at interpreter exit too
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-beside")

        def run():
            self._when_open()
            fn()
        self._pending.append(self._pool.submit(run))

    @property
    def given(self) -> bool:
        """Whether anything was submitted since the last wait."""
        return bool(self._pending)

    def wait(self) -> Folded:
        """Blocks until everything submitted is written; returns the thread's seconds and counts
        since the last wait (then forgets them). Raises the first error
        the thread met, once every submitted write has ended."""
        self.open()
        pending, self._pending = self._pending, []
        errors = [e for f in pending if (e := f.exception()) is not None]
        folded = Folded(dict(self.clock.seconds), self.ledger.totals())
        self.clock.seconds.clear()
        self.ledger.counts.clear()
        if errors:
            raise errors[0]
        return folded

    def shut(self) -> None:
        """The thread ended, once what it was given is written."""
        self.open()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
