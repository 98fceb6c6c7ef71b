"""Conversation turns: the role rules of chat rows, ShareGPT `conversations` read as messages, and
the mask that trains every assistant turn of a conversation.

A `messages` or `conversations` row trains each of its assistant turns (`data.train_turns: all`)
by one of two paths, chosen per tokenizer by harness.train.assistant_loss.choose_path:

- TRL_MARKERS: the row stays `{"messages": [...]}` and TRL masks it (SFTConfig
  `assistant_only_loss`), from the `{% generation %}` markers of the model's chat template or of
  the training template TRL ships for it;
- INCREMENTAL: the harness renders the template turn by turn (`incremental_mask`) and hands TRL
  the tokens with their `assistant_masks`, from which TRL builds the labels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from harness.core.errors import HarnessError

ROLES = ("system", "user", "assistant", "tool")
#: ShareGPT's `from` -> the chat role (TRL's own conversion knows human, gpt and system)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool"}
#: the row formats whose assistant turns `data.train_turns` chooses among
CHAT_FORMATS = ("messages", "conversations")
TRL_MARKERS = "trl_generation_markers"
INCREMENTAL = "harness_incremental"


def from_sharegpt(conversation, source: str, row: int) -> list[dict]:
    """A ShareGPT conversation (`from`/`value` turns) as chat messages (`role`/`content`)."""
    if not isinstance(conversation, list) or not conversation:
        raise HarnessError("conversations must be a non-empty list", file=source, row=row)
    messages = []
    for i, turn in enumerate(conversation):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise HarnessError(f"conversations[{i}] must be {{from: "
                               f"{'|'.join(SHAREGPT_ROLES)}, value: str}}", file=source, row=row)
        role = SHAREGPT_ROLES.get(turn.get("from"))
        if role is None:
            raise HarnessError(f"conversations[{i}]: unknown from {turn.get('from')!r} (known: "
                               f"{', '.join(SHAREGPT_ROLES)})", file=source, row=row)
        messages.append({"role": role, "content": turn["value"]})
    return messages


def check_messages(msgs, source: str, row: int, column: str = "messages",
                   all_turns: bool = False) -> None:
    """A conversation's turns in an order a chat template renders and a model can learn from: a
    system turn first if any, no two turns of one speaker in a row, tool results right after the
    assistant turn that called the tool (several results may follow one call), and the last turn
    the assistant's; with `all_turns` (every assistant turn trained) not the first, which would
    answer nothing. `column` names the row's field in the error."""
    if not isinstance(msgs, list) or not msgs:
        raise HarnessError(f"{column} must be a non-empty list", file=source, row=row)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(
                m.get("content"), str):
            raise HarnessError(f"{column}[{i}] must be {{role: {'|'.join(ROLES)}, content: str}}",
                               file=source, row=row)
        role, before = m["role"], msgs[i - 1]["role"] if i else None
        if role == "system" and i != 0:
            raise HarnessError(f"{column}[{i}]: a system turn must come first", file=source,
                               row=row)
        if role == "tool" and before not in ("assistant", "tool"):
            raise HarnessError(f"{column}[{i}]: a tool turn must follow the assistant turn that "
                               "called the tool", file=source, row=row)
        if before == "tool" and role not in ("assistant", "tool"):
            raise HarnessError(f"{column}[{i}]: a {role} turn after a tool turn (the assistant "
                               "answers the tool's result first)", file=source, row=row)
        if role == before and role != "tool":
            raise HarnessError(f"{column}[{i}]: two {role} turns in a row", file=source, row=row)
    if msgs[-1]["role"] != "assistant":
        raise HarnessError("the last turn must be the assistant's", file=source, row=row)
    if all_turns and msgs[0]["role"] == "assistant":
        raise HarnessError(f"{column}[0]: the conversation opens with an assistant turn, which "
                           "answers nothing; start it with a user or system turn", file=source,
                           row=row)


def _render(tok, turns: list[dict], generation_prompt: bool = False) -> list[int]:
    """Tokens of `turns` through the chat template, as TRL tokenizes a conversation."""
    return tok.apply_chat_template(turns, tokenize=True, return_dict=True,
                                   add_generation_prompt=generation_prompt)["input_ids"]


def incremental_mask(tok, msgs: list[dict], source: str = "", row: int | None = None
                     ) -> tuple[list[int], list[int]]:
    """The conversation's tokens, and a mask over them (1: trained) holding every assistant turn:
    assistant turn i is the tokens between the render of the turns before it with the generation
    prompt and the render through it. That is its content and whatever the template closes the
    turn with (the end-of-turn token: the model learns to stop), not the role header, which the
    generation prompt supplies at inference. System, user and tool turns stay 0: context.

    Both renders must be prefixes of the whole conversation's render; a template that renders a
    turn differently once later turns follow (one that drops earlier turns' reasoning, say) is
    refused in one line, as this row's mask would be wrong. The first turn is not the
    assistant's (check_messages with all_turns)."""
    ids = _render(tok, msgs)
    mask = [0] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = _render(tok, msgs[:i], generation_prompt=True)
        end = ids if i == len(msgs) - 1 else _render(tok, msgs[:i + 1])
        if ids[:len(start)] != start or ids[:len(end)] != end or len(end) < len(start):
            raise HarnessError(f"the chat template renders messages[{i}] (an assistant turn) "
                               "differently once later turns follow (it is not prefix-"
                               "consistent), so the turns cannot be masked one by one; train the "
                               "last turn only with data.train_turns: last", file=source,
                               row=row, key="data.train_turns")
        mask[len(start):len(end)] = [1] * (len(end) - len(start))
    return ids, mask


#: the file-order row number a row carries until it is masked, so errors name the row
ROW_COLUMN = "_row"


@dataclass
class TurnMasker:
    """How all-turn conversations become training rows for one tokenizer. `choose` is
    harness.train.assistant_loss.choose_path (only the train layer may ask TRL); it is asked once,
    when the first all-turn rows are masked."""
    tok: object
    choose: Callable[[object], str]

    @functools.cached_property
    def path(self) -> str:
        return self.choose(self.tok)

    def apply(self, ds, source: str):
        """`ds` (rows `{"messages", ROW_COLUMN}`) as TRL trains on it: as it is under
        TRL_MARKERS, with `input_ids` and `assistant_masks` beside the messages under INCREMENTAL
        (TRL takes tokenized rows as they are and builds the labels from the masks)."""
        if ds is None:
            return None
        if self.path == TRL_MARKERS:
            return ds.remove_columns(ROW_COLUMN)

        def mask(row):
            ids, masks = incremental_mask(self.tok, row["messages"], source, row[ROW_COLUMN])
            return {"input_ids": ids, "assistant_masks": masks}
        return ds.map(mask, remove_columns=ROW_COLUMN)


def masked_by_trl(ds) -> bool:
    """Whether `ds` holds all-turn conversations TRL has still to tokenize (TRL_MARKERS rows):
    SFTConfig's `assistant_only_loss` must be on for them, or every token would be trained.
    Rows TRL prepared already (tokenized, labelled) need it no more."""
    columns = ds.column_names if ds is not None else []
    return "messages" in columns and "input_ids" not in columns
