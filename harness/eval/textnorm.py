"""Answer normalization shared by the text metrics (SQuAD's rules, and simpler ones)."""
from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def squad(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize(text: str, *, ignore_case: bool = True, ignore_punctuation: bool = False,
              mode: str = "plain") -> str:
    if mode == "squad":
        return squad(text)
    text = text.strip()
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT)
    return " ".join(text.split())


def first_label(prediction: str, labels: list[str]) -> str:
    """The label a free-text answer names first ('Positive!' -> positive); '' if none."""
    words = squad(prediction).split()
    for w in words:
        for label in labels:
            if w == label.lower():
                return label
    return ""
