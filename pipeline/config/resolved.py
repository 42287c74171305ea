"""The config as files and W&B see it: resolved, JSON-safe, secret values removed (every other key kept)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

# a key that names a credential: `token`, `hf_token`, `api_key`, `wandb_api_key`, `password`, `secret`, ... but not
# `pad_token_id`, `max_new_tokens` or a tokenizer's special tokens (`eos_token`), which are settings
SECRET_KEY = re.compile(r"(^|_)(token|api_?key|password|secret)$", re.IGNORECASE)
SPECIAL_TOKEN = re.compile(r"^(bos|eos|pad|unk|sep|cls|mask)_token$", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key)) and not SPECIAL_TOKEN.match(key)


def to_plain_dict(cfg: DictConfig | Any) -> dict:
    """A resolved, JSON-safe dict of the config with secrets removed (for files and W&B)."""
    node = OmegaConf.structured(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return redact_secrets(OmegaConf.to_container(node, resolve=True, throw_on_missing=False))


def redact_secrets(value: Any) -> Any:
    """Drop any key that names a credential, at any depth."""
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value
