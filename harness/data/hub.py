"""Fail fast when the Hugging Face Hub is unreachable instead of retrying for a minute.

A Hub that answered is remembered for the process; one that did not is asked again next time
(a blip must not take a long sweep offline for good), and why it did not answer is kept for
the error a missing model or dataset then gets.
"""
from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

_answered = False  # the Hub answered once in this process
_offline_by_us = False  # HF_HUB_OFFLINE set here, not by the user
_why: str | None = None  # why the last probe found the Hub unreachable


def _user_offline() -> bool:
    return not _offline_by_us and \
        os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def unreachable_because(timeout: float = 3.0) -> str | None:
    """None when the Hub answers; else why not (offline mode, or the connection's error)."""
    global _answered
    if _user_offline():
        return "HF_HUB_OFFLINE is set"
    if _answered:
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    where = f"{url.hostname}:{url.port or 443}"
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as e:  # refused, timed out, no route, no DNS: the Hub is not reachable
        return f"{where}: {e.strerror or e or type(e).__name__}"
    _answered = True
    return None


def offline_reason() -> str | None:
    """Why the last go_offline_if_unreachable switched the HF libraries offline (or None)."""
    return _why


def go_offline_if_unreachable() -> bool:
    """When the Hub cannot be reached, switch the HF libraries to their local cache only, so a
    cached model or dataset still loads and a missing one fails at once; when it answers again,
    back online. Returns reachability."""
    global _offline_by_us, _why
    _why = unreachable_because()
    if _user_offline():
        return False
    if _why is not None or _offline_by_us:
        _offline_by_us = _why is not None
        if _offline_by_us:
            os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        else:
            os.environ.pop("HF_HUB_OFFLINE", None)
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        # the HF libraries read the variables at import time: set them where already imported
        for mod in ("huggingface_hub.constants", "datasets.config"):
            if mod in sys.modules:
                sys.modules[mod].HF_HUB_OFFLINE = _offline_by_us
    return _why is None
