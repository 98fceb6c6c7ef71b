"""Rows of data.train held out as a golden set (a recipe's eval.from_train): chosen once by a
seeded hash of each row, then left out of every load of the data after it, so no trial, seed
repeat or changed data setting of a sweep trains on them; and each held row as a prompt (the
conversation up to its last assistant turn) and a reference (that turn)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from harness.core.errors import HarnessError


def digest(row: dict) -> str:
    """A converted row's identity: its content, whatever its place in the file."""
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def count(size: int | float, total: int) -> int:
    """Rows a count or a share (below 1) of `total` rows asks for: a share at least one row."""
    return size if isinstance(size, int) else max(1, round(size * total))


@dataclass
class HeldRows:
    """The golden set's rows of one command: `size` (a count, or a share below 1) chosen with
    `seed` (the recipe's) on the first load of the data, by the rank of each row's seeded
    hash, so the choice depends on neither row order nor shuffling. Rows equal to a held one
    are left out of training too."""
    size: int | float
    seed: int
    rows: list[dict] | None = None  # the converted rows, in file order, once chosen
    digests: frozenset[str] = field(default_factory=frozenset)

    def take(self, rows: list[dict], source: str, lines: list[int]) -> tuple[list[dict], list[int]]:
        """`rows` (converted, in file order; `lines`: each one's line in the file) without the
        held ones, with their lines; the first call holds them."""
        ids = [digest(r) for r in rows]
        if self.rows is None:
            n = count(self.size, len(rows))
            if n >= len(rows):
                raise HarnessError(f"holding out {n} of {len(rows)} rows leaves none to train "
                                   "on", file=source, key="eval.from_train.rows")
            rank = sorted(range(len(rows)), key=lambda i: (hashlib.sha256(
                f"{self.seed}\0{ids[i]}".encode()).hexdigest(), i))
            held = sorted(rank[:n])
            self.rows = [rows[i] for i in held]
            self.digests = frozenset(ids[i] for i in held)
            for i, row in zip(held, self.rows):
                split(row, source, lines[i])  # a row with no answer to score fails now
        kept = [i for i, d in enumerate(ids) if d not in self.digests]
        return [rows[i] for i in kept], [lines[i] for i in kept]

    def examples(self, source: str) -> tuple[list[list[dict]], list[str]]:
        """(prompts as chat messages, references) of the held rows."""
        pairs = [split(r, source, i + 1) for i, r in enumerate(self.rows or [])]
        return [p for p, _ in pairs], [ref for _, ref in pairs]


def split(row: dict, source: str, index: int) -> tuple[list[dict], str]:
    """A converted supervised row (TRL's prompt/completion messages, or one `messages` list) as
    (the turns before its last assistant turn, that turn's text)."""
    if "messages" in row:
        turns = list(row["messages"])
    elif "prompt" in row and "completion" in row:
        as_turns = lambda x, role: x if isinstance(x, list) else [  # noqa: E731
            {"role": role, "content": x}]
        turns = as_turns(row["prompt"], "user") + as_turns(row["completion"], "assistant")
    else:
        raise HarnessError("a golden set cut from the training data needs rows with an answer "
                           "(messages, prompt/completion, instruction/output, question/answer)",
                           file=source, key="eval.from_train")
    last = max((i for i, t in enumerate(turns) if t.get("role") == "assistant"), default=None)
    if not last or not str(turns[last].get("content") or "").strip():
        raise HarnessError("row has no assistant turn after a prompt to hold out as a reference",
                           file=source, row=index)
    return turns[:last], turns[last]["content"]


def check_prompt(turns, source: str, index: int, column: str = "prompt") -> None:
    """A golden-set prompt given as a conversation: {role, content} turns (a system turn first,
    roles alternating, as training rows are checked) that end with the user's turn."""
    from harness.data.turns import check_messages
    if not (isinstance(turns, list) and turns and isinstance(turns[-1], dict)
            and turns[-1].get("role") == "user"):
        raise HarnessError(f"{column!r}: a conversation must end with the user's turn",
                           file=source, row=index)
    check_messages(turns + [{"role": "assistant", "content": "-"}], source, index)
