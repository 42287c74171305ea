"""The hub, probed once: when it cannot be reached, the run works offline at once (from the local cache) instead of
retrying for most of a minute before an error."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 5.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_ids(run: Any) -> list[str]:
    """The names in the config that only the hub can resolve (not a local path)."""
    sources = run.data.source if isinstance(run.data.source, list) else [run.data.source]
    names = [run.model.name, *map(str, sources)]
    return [n for n in names if n and not n.startswith(("/", ".", "~")) and not Path(n).exists() and "*" not in n
            and Path(n).suffix not in (".json", ".jsonl", ".csv", ".parquet")]


def working_offline() -> bool:
    """Whether huggingface_hub, datasets or transformers are told to stay off the network."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in (*OFFLINE_VARIABLES,
                                                                               "TRANSFORMERS_OFFLINE"))


def files_at_hand(name: str, revision: str | None, files: tuple[str, ...]) -> bool:
    """Whether a model's files can be read without asking the network: a local folder, the hub while online, or
    one of `files` in the local hub cache while offline (checked without importing transformers)."""
    if Path(name).expanduser().is_dir() or not working_offline():
        return True
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, file, revision=revision), str) for file in files)


def go_offline_if_unreachable(run: Any) -> str | None:
    """Probe the hub once (5 s at most) when the config names hub ids and offline mode is not already on; if it
    cannot be reached, switch this process to offline mode and return a note saying so."""
    if working_offline() or not hub_ids(run):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
        return None
    except OSError as error:
        for variable in OFFLINE_VARIABLES:  # read by huggingface_hub and datasets when they are first imported
            os.environ[variable] = "1"
        reason = error.strerror or type(error).__name__
        return f"the hub ({host}) cannot be reached ({reason}): working offline, from the local cache only"
