"""Which tokens a 3-turn conversation trains, per turn, by each path (issue 46 item 1): the old
last-turn-only rows (`data.train_turns: last`, TRL's prompt/completion mask), the harness's own
incremental mask (harness.data.turns.INCREMENTAL) and TRL's assistant-only loss from
`{% generation %}` markers (turns.TRL_MARKERS), and whether the two all-turn paths agree.

The labels are the ones TRL itself builds: each path's rows go through the harness's loader
(trainset.load_train) into a real SFTTrainer (a 2-layer Llama built from a config; nothing is
trained), and the trained tokens are its prepared rows' labels that are not -100. Three chat
templates on SmolLM2's tokenizer, whose vocabulary holds ChatML's <|im_start|>/<|im_end|>:

- smollm2: its own template, no markers (TRL knows no training variant: the harness's path);
- smollm2+markers: the same template with {% generation %} around what follows the generation
  prompt (renders the same text), so both all-turn paths run on one rendering;
- qwen2_5_training: the training template TRL ships for Qwen2.5 (trl/chat_templates), whose
  markers also hold the newline that closes the role header: TRL's path trains that token too,
  which the generation prompt supplies at inference (the harness's path does not).

    python bench/turn_masks.py [--tokenizer ../shared/anchors/smollm2-135m]

CPU only, seconds; no GPU measurement in it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# the tests' conversation and marked template (tests/conftest.py), so the figures printed here
# are the ones tests/data/test_turns.py and tests/train/test_assistant_loss.py assert
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import CONVERSATION, MARKED_TEMPLATE  # noqa: E402


def templates(tok) -> dict[str, str]:
    import trl
    qwen = Path(trl.__file__).parent / "chat_templates" / "qwen2_5_training.jinja"
    return {"smollm2": tok.chat_template, "smollm2+markers": MARKED_TEMPLATE,
            "qwen2_5_training": qwen.read_text()}


def tiny_model(tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))


def trained_row(tok, data: str, train_turns: str, path: str | None, out: str):
    """(input_ids, labels) of the conversation as SFTTrainer prepares it for this path."""
    from trl import SFTConfig, SFTTrainer

    from harness.config.recipe import DataSpec
    from harness.data import trainset, turns
    from harness.train import assistant_loss, trainers
    masker = turns.TurnMasker(tok, lambda _: path)  # the path forced: both run on one template
    ds, _, info = trainset.load_train(DataSpec(train=data, train_turns=train_turns), 0,
                                      masker=masker)
    checkpointing = trainers.checkpointing_key(trainers.TRAINERS.get("sft"))
    config = SFTConfig(output_dir=out, report_to="none", max_steps=1, use_cpu=True,
                       max_length=None, **{checkpointing: False})
    assistant_loss.configure(config, ds)  # as harness.train.trainers.train does
    trainer = SFTTrainer(model=tiny_model(tok), args=config, train_dataset=ds,
                         processing_class=tok)
    row = trainer.train_dataset[0]
    return row["input_ids"], row["labels"]


def turn_spans(tok, msgs) -> list[tuple[int, int]]:
    """Each turn's tokens [start, end) in the whole conversation's render."""
    bounds = [0] + [len(tok.apply_chat_template(msgs[:i + 1], tokenize=True, return_dict=True)
                        ["input_ids"]) for i in range(len(msgs))]
    return list(zip(bounds, bounds[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="../shared/anchors/smollm2-135m")
    args = ap.parse_args()
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from harness.data import turns
    from harness.train import assistant_loss
    hf_logging.set_verbosity_error()
    work = tempfile.mkdtemp()
    data = str(Path(work) / "conversation.jsonl")
    Path(data).write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    base = AutoTokenizer.from_pretrained(args.tokenizer)
    for name, template in templates(base).items():
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        tok.chat_template = template
        chosen = assistant_loss.choose_path(tok)
        paths = {"last-only": ("last", None), "incremental": ("all", turns.INCREMENTAL)}
        if chosen == turns.TRL_MARKERS:
            paths["trl-markers"] = ("all", turns.TRL_MARKERS)
        rows = {p: trained_row(tok, data, *how, work) for p, how in paths.items()}
        ids = rows["incremental"][0]
        print(f"\n== template {name}: the harness chooses {chosen}; {len(ids)} tokens")
        if any(r[0] != ids for r in rows.values()):
            print("   (the paths' input_ids differ)")
        print(f"   {'turn':<16}{'tokens':>7}" + "".join(f"{p:>13}" for p in rows))
        for i, (start, end) in enumerate(turn_spans(tok, CONVERSATION)):
            counts = [sum(lab != -100 for lab in r[1][start:end]) for r in rows.values()]
            print(f"   {i} {CONVERSATION[i]['role']:<14}{end - start:>7}"
                  + "".join(f"{c:>13}" for c in counts))
            if CONVERSATION[i]["role"] == "assistant":
                inc = rows["incremental"][1][start:end]
                print(f"     incremental trains {tok.decode([t for t in inc if t != -100])!r}")
        if "trl-markers" in rows:
            inc, trl = rows["incremental"][1], rows["trl-markers"][1]
            differ = [j for j, (a, b) in enumerate(zip(inc, trl)) if (a != -100) != (b != -100)]
            agree = not differ and len(inc) == len(trl)
            print(f"   incremental and trl-markers agree: {'yes' if agree else 'no'}"
                  + "".join(f"; position {j} {tok.decode([ids[j]])!r} trained by "
                            f"{'trl-markers' if trl[j] != -100 else 'incremental'} only"
                            for j in differ))


if __name__ == "__main__":
    main()
