"""Fail fast when the Hugging Face Hub is unreachable instead of retrying for a minute."""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


@functools.cache
def reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline_if_unreachable() -> bool:
    """When the Hub cannot be reached, switch the HF libraries to their local cache only, so a
    cached model or dataset still loads and a missing one fails at once. Returns reachability."""
    if reachable():
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # the HF libraries read the variables at import time: patch them where already imported
    import sys
    for mod in ("huggingface_hub.constants", "datasets.config"):
        if mod in sys.modules:
            sys.modules[mod].HF_HUB_OFFLINE = True
    return False
