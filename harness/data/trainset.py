"""Training data: loading with `datasets`, format detection, checks, conversion to TRL's shapes.

Every single-answer supervised format becomes TRL's conversational prompt/completion rows, so
SFTTrainer masks the prompt (loss on the answer only) the way TRL documents; conversations train
every assistant turn (harness.data.turns) or only the last; plain text stays language modeling.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from harness.data import mathgen, turns
from harness.core.errors import HarnessError
from harness.config.recipe import DataSpec
from harness.core.registry import Registry

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

# format -> columns that identify it, in detection order
FORMATS = {
    "preference": ("chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),  # KTO: one completion, judged good or bad
    "messages": ("messages",),
    "conversations": ("conversations",),  # ShareGPT: from/value turns
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "question_answer": ("question", "answer"),
    "prompt": ("prompt",),  # prompt-only rows (GRPO), with an optional reference `answer`
    "text": ("text",),
}
#: what each kind of trainer reads
KINDS = {"supervised": ("messages", "conversations", "prompt_completion", "instruction",
                        "question_answer", "text"),
         "preference": ("preference",),
         # reinforcement fine-tuning: prompts to complete, and the answer a verifier checks
         "prompt": ("prompt", "question_answer", "prompt_completion"),
         # KTO: single completions labelled desirable or not (pairs are unpaired by train.py)
         "unpaired": ("unpaired", "preference")}


#: `data.train: builtin:<name>`: generators of rows, (rows, seed, max_operand) -> list[dict]
BUILTIN_DATA: Registry = Registry("built-in data")
BUILTIN_DATA.register("builtin:math")(mathgen.generate_rows)
BUILTIN_DATA.register("builtin:math_preferences")(mathgen.generate_preference_rows)
BUILTIN_DATA.register("builtin:math_unpaired")(mathgen.generate_unpaired_rows)


def builtin_rows(spec: DataSpec) -> list[dict] | None:
    """Rows of a built-in generator named by `data.train`, or None for any other source."""
    if not spec.train.startswith("builtin:"):
        return None
    make = BUILTIN_DATA.get(spec.train, key="data.train")
    return make(spec.builtin_rows, spec.builtin_seed, spec.builtin_max_operand)


def _check_json_lines(path: Path) -> None:
    """datasets reports a bad JSON line as a pyarrow error without its line: find it first."""
    rows = 0
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise HarnessError(f"not valid JSON ({e.msg})", file=str(path), row=i) from None
            if not isinstance(row, dict):
                raise HarnessError("each line must be a JSON object", file=str(path), row=i)
    if not rows:
        raise HarnessError("the dataset has no rows", file=str(path))


def load_source(source: str, split: str = "train", subset: str | None = None,
                key: str = "data.train"):
    """A `datasets.Dataset` from a local file or folder, or a Hub dataset id."""
    import datasets
    datasets.disable_progress_bars()
    p = Path(source).expanduser()
    try:
        if p.is_file():
            builder = LOCAL_BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise HarnessError(f"unsupported file type {p.suffix!r} (use "
                                   f"{', '.join(LOCAL_BUILDERS)})", file=source, key=key)
            if p.stat().st_size == 0:
                raise HarnessError("the dataset has no rows", file=source, key=key)
            if p.suffix.lower() == ".jsonl":
                _check_json_lines(p)
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
        elif p.is_dir():
            ds = datasets.load_dataset(str(p), split=split)
        elif source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise HarnessError(f"dataset path {source!r} does not exist", key=key)
        else:
            from harness.data import hub
            hub.go_offline_if_unreachable()  # a cached copy still loads; else it fails at once
            ds = datasets.load_dataset(source, subset, split=split)
    except HarnessError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        from harness.data import hub
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = hub.offline_reason()
        raise HarnessError(f"cannot load dataset {source!r}: {first}"
                           + (f" (the Hub is unreachable: {why})" if why else ""), key=key) from None
    except Exception as e:  # pyarrow parse errors and the like: still the user's file
        if type(e).__module__.startswith(("pyarrow", "datasets")):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise HarnessError(f"cannot read dataset: {first}", file=source, key=key) from None
        raise
    if len(ds) == 0:
        raise HarnessError("the dataset has no rows", file=source, key=key)
    return ds


#: shapes only one kind of trainer reads, detected only for it: elsewhere prompt/completion/label
#: rows are prompt/completion rows (the label unused), and prompt/chosen rows lack `rejected`
OWN_FORMATS = {"unpaired": "unpaired", "prompt": "prompt"}


def detect_format(columns: list[str], source: str, key: str = "data.format",
                  kind: str | None = None) -> str:
    candidates = {f: c for f, c in FORMATS.items()
                  if f not in OWN_FORMATS or OWN_FORMATS[f] == kind}
    for fmt, needed in candidates.items():
        if all(c in columns for c in needed):
            return fmt
    known = "; ".join(f"{f}: {', '.join(c)}" for f, c in candidates.items())
    raise HarnessError(f"cannot tell the row format from columns {columns} (expected {known})",
                       file=source, key=key)


def to_trl(row: dict, fmt: str, source: str, index: int, train_turns: str = "all") -> dict:
    """One row in TRL's conversational shape: prompt/completion, prompt/chosen/rejected,
    {'messages'} for a conversation whose every assistant turn trains (`train_turns` all), or
    {'text'} for plain language modeling."""
    def need(*cols):
        for c in cols:
            v = row.get(c)
            if not isinstance(v, str) or not v.strip():
                raise HarnessError(f"column {c!r} is empty or not a string", file=source, row=index)
    if fmt == "preference":
        return _preference(row, source, index, need)
    if fmt == "unpaired":
        if not isinstance(row["label"], bool):
            raise HarnessError(f"column 'label' must be true or false, got {row['label']!r}",
                               file=source, row=index)
        pair = to_trl({"prompt": row["prompt"], "completion": row["completion"]},
                      "prompt_completion", source, index)
        return {**pair, "label": row["label"]}
    if fmt in turns.CHAT_FORMATS:
        msgs = row["messages"] if fmt == "messages" else turns.from_sharegpt(
            row["conversations"], source, index)
        turns.check_messages(msgs, source, index, fmt, all_turns=train_turns == "all")
        if train_turns == "all":
            return {"messages": msgs}
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}  # the earlier turns: context
    if fmt == "prompt_completion":
        p, c = row["prompt"], row["completion"]
        if isinstance(p, list) and isinstance(c, list):
            turns.check_messages(p + c, source, index)
            return {"prompt": p, "completion": c}
        need("prompt", "completion")
        return {"prompt": [{"role": "user", "content": p}],
                "completion": [{"role": "assistant", "content": c}]}
    if fmt == "instruction":
        need("instruction", "output")
        extra = row.get("input") or ""
        user = row["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
        return {"prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": row["output"]}]}
    if fmt == "question_answer":
        need("question", "answer")
        return {"prompt": [{"role": "user", "content": row["question"]}],
                "completion": [{"role": "assistant", "content": row["answer"]}]}
    need("text")
    return {"text": row["text"]}


def to_prompt(row: dict, fmt: str, source: str, index: int) -> dict:
    """One row for GRPO: a conversational `prompt`, and the reference `answer` verifiable
    rewards check (TRL hands the row's other columns to the reward functions)."""
    prompt = row.get("question") if fmt == "question_answer" else row.get("prompt")
    answer = row.get("answer") if fmt != "prompt_completion" else row.get("completion")
    if isinstance(answer, list):  # a chat completion: its text
        answer = "".join(m.get("content") or "" for m in answer if isinstance(m, dict))
    if isinstance(prompt, list):
        turns.check_messages(prompt + [{"role": "assistant", "content": "-"}], source, index)
    elif isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    else:
        column = "question" if fmt == "question_answer" else "prompt"
        raise HarnessError(f"column {column!r} is empty or not a string", file=source, row=index)
    return {"prompt": prompt, "answer": "" if answer is None else str(answer)}


def _preference(row: dict, source: str, index: int, need) -> dict:
    """Explicit prompt (plain or chat) or implicit-prompt chat pairs, as TRL documents them."""
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list):
        for msgs in (chosen, rejected):  # implicit prompt: the shared turns are the prompt
            turns.check_messages((prompt or []) + msgs, source, index)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected} if prompt else {
            "chosen": chosen, "rejected": rejected}
    need("chosen", "rejected", *(["prompt"] if prompt is not None else []))
    if prompt is None:
        return {"chosen": chosen, "rejected": rejected}  # plain implicit-prompt pair
    return {"prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def load_train(spec: DataSpec, seed: int, kind: str = "supervised",
               masker: turns.TurnMasker | None = None, held=None):
    """(train, eval or None, info) as TRL-ready datasets; info goes to tracking as params.
    `masker` masks conversations whose every assistant turn trains (needed for those only).
    `held`: a golden set's rows (harness.data.heldrows.HeldRows), left out before the eval and
    training rows are sliced (its first load chooses them)."""
    import datasets
    rows = builtin_rows(spec)
    raw = datasets.Dataset.from_list(rows) if rows else load_source(spec.train, spec.split,
                                                                     spec.subset)
    fmt = spec.format if spec.format != "auto" else detect_format(raw.column_names, spec.train,
                                                                     kind=kind)
    needed = FORMATS[fmt]
    missing = [c for c in needed if c not in raw.column_names]
    if missing:
        raise HarnessError(f"format {fmt} needs columns {missing}, found {raw.column_names}",
                           file=spec.train, key="data.format")
    if fmt not in KINDS[kind]:
        raise HarnessError(f"a {kind} trainer cannot train on {fmt} rows (it reads "
                           f"{', '.join(KINDS[kind])})", file=spec.train, key="data.train")
    skip = min(spec.skip_rows, len(raw))
    # converted in file order, so an error's row number is the row's line in the file
    convert = to_prompt if kind == "prompt" else functools.partial(
        to_trl, train_turns=spec.train_turns)
    lines = list(range(skip + 1, len(raw) + 1))  # each row's line, for errors after slicing
    rows = [convert(r, fmt, spec.train, line)
            for line, r in zip(lines, raw.select(range(skip, len(raw))))]
    if fmt == "preference" and all(r["chosen"] == r["rejected"] for r in rows):
        raise HarnessError("chosen equals rejected on every row: nothing to prefer",
                           file=spec.train, row=skip + 1)
    if held is not None:
        rows, lines = held.take(rows, spec.train, lines)
    n_eval = spec.eval_rows
    n_train = len(rows) - n_eval if spec.max_rows is None else min(spec.max_rows, len(rows) - n_eval)
    if n_train <= 0:
        raise HarnessError(f"no training rows left ({len(rows)} rows, {n_eval} held out for eval)",
                           file=spec.train, key="data.eval_rows")
    # the rows as converted, before any shuffle: the same source and settings give the same hash
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    ds = datasets.Dataset.from_list(rows)
    all_turns = fmt in turns.CHAT_FORMATS and spec.train_turns == "all"
    if all_turns:  # masked once selected (a slice of a large file costs no more than the slice)
        if masker is None:
            raise TypeError("all-turn conversations need load_train's masker")
        ds = ds.add_column(turns.ROW_COLUMN, lines)
    if spec.shuffle:
        ds = ds.shuffle(seed=seed)
    train = ds.select(range(n_eval, n_eval + n_train)).flatten_indices()
    evalset = ds.select(range(n_eval)).flatten_indices() if n_eval else None
    info = {"format": fmt, "rows_train": len(train), "rows_eval": n_eval, "fingerprint": digest,
            **({"rows_golden": len(held.rows)} if held is not None else {})}
    if all_turns:
        train, evalset = (masker.apply(d, spec.train) for d in (train, evalset))
        info["turn_mask"] = masker.path  # which path trains the turns (harness.data.turns)
    return train, evalset, info


def check_lengths(ds, tok, max_length: int | None, source: str, sample: int = 256) -> int:
    """Refuse data whose every row is longer than max_length (TRL would truncate each one, the
    answers first). Checks up to `sample` rows; returns how many of them are longer."""
    if not max_length or ds is None or len(ds) == 0:
        return 0
    rows = ds.select(range(min(sample, len(ds))))

    def length(row) -> int:
        if "input_ids" in row:  # conversations the harness tokenized (turns.INCREMENTAL)
            return len(row["input_ids"])
        if "messages" in row:
            msgs = row["messages"]
        elif "completion" in row:
            msgs = row["prompt"] + row["completion"]
        elif "answer" in row:  # a prompt to complete (GRPO)
            msgs = row["prompt"]
        elif "chosen" in row:  # implicit-prompt pairs carry no prompt column
            if isinstance(row["chosen"], str):  # plain text pairs: no chat template
                return len(tok((row.get("prompt") or "") + row["chosen"])["input_ids"])
            msgs = (row.get("prompt") or []) + row["chosen"]
        else:
            return len(tok(row["text"])["input_ids"])
        return len(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
    lengths = [length(r) for r in rows]
    longer = sum(n > max_length for n in lengths)
    if longer == len(lengths):
        raise HarnessError(f"every row is longer than trainer.max_length={max_length} tokens "
                           f"(the shortest of {len(lengths)} checked has {min(lengths)}); raise "
                           "trainer.max_length", file=source, key="trainer.max_length")
    return longer
