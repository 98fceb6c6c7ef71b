"""What the harness tells the terminal: the one error type it raises for bad input, the
did-you-mean helper, the phase an error happened in, and progress lines (`say`).

The CLI prints a HarnessError as a single line and exits 2 (a TrainingFault: 1); anything else
is a bug, printed as one line naming the phase and a crash log that holds the traceback.
"""
from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterable

from harness.core import stopping


# what str.splitlines() splits on
_LINE_BREAKS = (10, 11, 12, 13, 28, 29, 30, 133, 0x2028, 0x2029)


class HarnessError(Exception):
    """Bad input from the user: carries where it was found (file, YAML key path, data row)."""
    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 row: int | None = None):
        self.message, self.file, self.key, self.row = message, file, key, row
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [str(self.file)] if self.file else []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.key:
            where.append(self.key)
        text = ": ".join(where + [self.message])
        # one line whatever the input held: a YAML key or value may contain line breaks
        return text.translate({c: repr(chr(c))[1:-1] for c in _LINE_BREAKS})


@contextlib.contextmanager
def located(file: str):
    """Errors raised below without a file name `file` (the recipe they came from)."""
    try:
        yield
    except HarnessError as e:
        if e.file is None:
            e.file = file
        raise


class TrainingFault(HarnessError):
    """Training went wrong, not the input as written: a NaN or inf loss, out of GPU memory, a
    full disk. One line saying what to change; the run ends FAILED and a sweep goes on with its
    next trial."""
    exit_code = 1


class Unavailable(HarnessError):
    """A service the command needs did not answer (a database server): neither the input as
    written nor a bug. One line naming the key and the cause, exit 1; the same command works
    once the service is back."""
    exit_code = 1


class Diverged(TrainingFault):
    """A NaN or inf loss. The logged loss is averaged over data-parallel ranks, so every rank of
    a multi-GPU trial sees it at the same step (unlike running out of memory, which one rank
    may do alone)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' for the closest choice, or '' when nothing is close."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not close:  # short names: 'rank' for 'r', 'alpha_lora' for 'alpha'
        close = sorted((c for c in choices if str(word).startswith(c) or c.startswith(str(word))),
                       key=len, reverse=True)
    return f"; did you mean {close[0]}?" if close else ""


@contextlib.contextmanager
def phase(name: str):
    """Names what the harness is doing inside the block ("scoring the starting model"): an
    unexpected error raised there carries the innermost phase as `harness_phase`, which the
    CLI's one line names. A stop signal that was swallowed is raised again here
    (harness.core.stopping)."""
    stopping.check()
    try:
        yield
    except Exception as e:
        if not hasattr(e, "harness_phase"):
            e.harness_phase = name
        raise


def say(msg: str) -> None:
    """A progress line on stderr, where the one-line errors go too."""
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


class TrialPruned(Exception):
    """A sweep trial stopped early by its pruner; its MLflow run ends KILLED, tagged PRUNED."""
    mlflow_status = "KILLED"
