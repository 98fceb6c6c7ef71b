"""Which path trains every assistant turn of a conversation for a tokenizer (harness.data.turns):
TRL's assistant-only loss where a chat template marks the generations, the harness's own
turn-by-turn mask elsewhere. Decided here only, because only the train layer may ask TRL."""
from __future__ import annotations

from harness.core.errors import HarnessError
from harness.data import turns


def choose_path(tok) -> str:
    """turns.TRL_MARKERS where the tokenizer's chat template marks generations (`{% generation
    %}`) or TRL ships a training template for it (trl.chat_template_utils
    .get_training_chat_template, which SFTTrainer swaps in itself); turns.INCREMENTAL for every
    other template (SmolLM2's, and many on the Hub: TRL would refuse them)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    template = tok.chat_template
    if not template:
        raise HarnessError("the model's tokenizer has no chat template, which conversation rows "
                           "need", key="model.name")
    if has_generation_markers(template):
        return turns.TRL_MARKERS
    try:
        get_training_chat_template(tok)
    except ValueError:  # TRL's word for a template it knows no training variant of
        return turns.INCREMENTAL
    return turns.TRL_MARKERS


def masker(tok) -> turns.TurnMasker:
    """The data layer's masker for `tok`, its path chosen here when first needed."""
    return turns.TurnMasker(tok, choose_path)


def configure(config, train_ds) -> None:
    """Assistant-only loss on for rows left to TRL's markers (turns.masked_by_trl): without it
    TRL trains every token of them. Other rows keep the recipe's setting."""
    if turns.masked_by_trl(train_ds):
        config.assistant_only_loss = True
