"""The config as files and W&B see it: resolved, JSON-safe, secret values removed (every other key kept).

A key that names a credential is dropped; a value that holds a secret from the environment (`HF_TOKEN`,
`WANDB_API_KEY`, any variable named like a credential), put there by `${oc.env:...}` or by the shell, is written as
`<$NAME>` wherever config is written (config.resolved.yaml, .hydra/, W&B), with one warning line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

# a key that names a credential: `token`, `hf_token`, `api_key`, `wandb_api_key`, `password`, `secret`, ... but not
# `pad_token_id`, `max_new_tokens` or a tokenizer's special tokens (`eos_token`), which are settings
SECRET_KEY = re.compile(r"(^|_)(token|api_?key|password|secret)$", re.IGNORECASE)
SPECIAL_TOKEN = re.compile(r"^(bos|eos|pad|unk|sep|cls|mask)_token$", re.IGNORECASE)
SECRET_MIN_LENGTH = 8  # shorter values are too likely to occur in the config by chance
log = logging.getLogger(__name__)
_said: set[str] = set()


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key)) and not SPECIAL_TOKEN.match(key)


def to_plain_dict(cfg: DictConfig | Any) -> dict:
    """A resolved, JSON-safe dict of the config with secrets removed (for files and W&B)."""
    node = OmegaConf.structured(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return redact_secrets(OmegaConf.to_container(node, resolve=True, throw_on_missing=False))


def redact_secrets(value: Any) -> Any:
    """Drop any key that names a credential, and write a secret the environment holds as its name, at any depth."""
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return without_secret_values(value) if isinstance(value, str) else value


def secret_values() -> dict[str, str]:
    """The environment's credentials: variables named like one (HF_TOKEN, WANDB_API_KEY, ...), by value."""
    return {value: name for name, value in os.environ.items()
            if is_secret_key(name.lower()) and len(value) >= SECRET_MIN_LENGTH}


def without_secret_values(text: str) -> str:
    """`text` with every secret of the environment in it replaced by `<$NAME>` (said once per variable)."""
    for value, name in secret_values().items():
        if value in text:
            text = text.replace(value, f"<${name}>")
            if name not in _said:
                _said.add(name)
                log.warning("note: a config value holds $%s: written as <$%s> in config files and W&B", name, name)
    return text
