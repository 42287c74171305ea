"""Named chat templates: Unsloth's (`get_chat_template`) on the Unsloth backend, TRL's shipped ones on `hf`.

The plain HF backend must not import Unsloth (it patches transformers, PEFT and TRL on import), so there a name is
looked up among the Jinja templates TRL ships (trl/chat_templates/), under TRL's file name or Unsloth's spelling.
"""

from __future__ import annotations

from typing import Any

from pipeline.compat import trl_template_files
from pipeline.errors import ConfigError, did_you_mean

# Unsloth's spelling -> TRL's file stem, for the templates both have
UNSLOTH_TO_TRL = {"llama-3": "llama3", "llama-3.1": "llama3_1", "llama-3.2": "llama3_2", "qwen-2.5": "qwen2_5",
                  "qwen2.5": "qwen2_5", "qwen-3": "qwen3", "qwen3": "qwen3", "phi-3": "phi3", "phi-3.5": "phi3_5",
                  "gemma": "gemma", "gemma-3": "gemma3"}


def apply_named_chat_template(tokenizer: Any, name: str | None, backend: str) -> Any:
    """Replace the tokenizer's template with a named one; None keeps the tokenizer's own."""
    if not name:
        return tokenizer
    if backend == "unsloth":
        from pipeline.outputs.logs import prints_to_log

        with prints_to_log("unsloth"):  # its banner, when this is the first import of Unsloth (preprocess)
            from unsloth.chat_templates import CHAT_TEMPLATES, get_chat_template

        if name not in CHAT_TEMPLATES:
            raise ConfigError("model.chat_template", f"unknown template '{name}'",
                              did_you_mean(name, CHAT_TEMPLATES))
        # map_eos_token=False: keep the model's own end-of-sequence token (Unsloth would rename it).
        return get_chat_template(tokenizer, chat_template=name, map_eos_token=False)
    shipped = trl_template_files()
    path = shipped.get(UNSLOTH_TO_TRL.get(name, name))
    if path is None:
        hint = did_you_mean(name, list(shipped) + list(UNSLOTH_TO_TRL))
        if not hint.startswith("did you mean"):
            hint = "TRL ships e.g. llama-3.1, qwen-2.5, phi-3, gemma (all in trl/chat_templates/)"
        raise ConfigError("model.chat_template", f"'{name}' is not among the templates TRL ships for backend=hf",
                          f"{hint}; or use backend=unsloth for Unsloth's templates")
    tokenizer.chat_template = path.read_text()
    return tokenizer
