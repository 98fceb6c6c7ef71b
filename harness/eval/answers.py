"""Final-answer extraction for math: '#### N' first, else the last number in the text."""
from __future__ import annotations

import re

NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
FINAL = re.compile(rf"####\s*({NUMBER})")
ANY = re.compile(NUMBER)


def extract_number(text: str) -> float | None:
    """'#### 72', '$1,000.00', 'so she has 1000 apples.' give 72.0, 1000.0, 1000.0."""
    m = FINAL.search(text)
    raw = m.group(1) if m else (ANY.findall(text) or [None])[-1]
    if raw is None:
        return None
    try:
        return float(raw.replace("$", "").replace(",", ""))
    except ValueError:
        return None
