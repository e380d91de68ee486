"""Reaching the Hugging Face hub: whether it is out of reach, and the options every ``from_pretrained`` call takes."""

from __future__ import annotations

import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

#: ``name`` or ``owner/name``: what a Hugging Face hub id looks like (anything else must be a local folder).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def pretrained_kwargs() -> dict[str, Any]:
    """``from_pretrained`` options: low-memory loading only where ``accelerate`` provides it (diffusers otherwise
    warns on every load, then falls back to the same plain loading)."""
    from diffusers.utils import is_accelerate_available

    return {"low_cpu_mem_usage": is_accelerate_available()}


def hub_offline(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub is out of reach: ``HF_HUB_OFFLINE`` is set, or its endpoint (``HF_ENDPOINT``)
    refuses a TCP connection within ``timeout`` seconds.  Behind a proxy the hub is assumed reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)),
                                      timeout=timeout):
            return False
    except OSError:
        return True
