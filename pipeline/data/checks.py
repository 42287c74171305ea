"""Checks on the rows as read, before any tokenizer: required fields, message shapes, roles, content parts.

Each names the first sample at fault in one line (`ConfigError`), so a data mistake costs no model import.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError

MESSAGE_ROLES = ("system", "user", "assistant", "tool")


def part_text(part: dict) -> Any:
    """A text part's text: OpenAI's `{"type": "text", "text": ...}`, LLaMA-Factory v1's `{..., "value": ...}`."""
    return part["text"] if part.get("text") is not None else part.get("value")


def non_text_part(content: Any) -> str | None:
    """The type of the first content part that is not text (an image, audio, a file), or None."""
    if not isinstance(content, list):
        return None
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part_text(part), str):
            return str(kind)
    return None


REQUIRED_TEXT = {"alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
                 "text": ("text",)}


def check_rows(dataset: Any, fmt: str, key: str = "data.source", turns_column: list | None = None) -> None:
    """Name the first sample with a missing, empty or misshapen required field (CSV gaps, nulls in JSON);
    `turns_column`: the conversations column, when the caller has read it already."""
    for column in REQUIRED_TEXT.get(fmt, ()):
        for index, value in enumerate(dataset[column]):
            if value is None or (isinstance(value, (str, list)) and not value):
                raise ConfigError(key, f"sample {index} has an empty '{column}'", "fill it in or remove the sample")
    if fmt in ("messages", "sharegpt"):
        column = "messages" if fmt == "messages" else "conversations"
        for index, turns in enumerate(dataset[column] if turns_column is None else turns_column):
            if not turns:
                raise ConfigError(key, f"sample {index} has no '{column}'", "give every sample at least one turn")
            odd = next((t for t in turns if not isinstance(t, dict)), None) if isinstance(turns, list) else turns
            if odd is not None:
                kind = f"a list of {type(odd).__name__}" if isinstance(turns, list) else f"a {type(odd).__name__}"
                raise ConfigError(key, f"sample {index}: '{column}' is {kind}, not a list of messages",
                                  'write it as [{"role": ..., "content": ...}, ...]')


def check_roles(conversations: list, key: str = "data.source", column: str = "messages") -> None:
    for index, messages in enumerate(conversations):
        for turn in messages:
            if turn.get("role") not in MESSAGE_ROLES:
                raise ConfigError(key, f"sample {index} has a message with role {turn.get('role')!r}",
                                  f"use roles {', '.join(MESSAGE_ROLES)} (or map them in the file)")
            if turn.get("content") is None and not turn.get("tool_calls"):  # a tool call may come without text
                raise ConfigError(key, f"sample {index} has a {turn.get('role')} message with no content",
                                  "fill it in or remove the sample")
            kind = non_text_part(turn.get("content"))
            if kind is not None:
                raise ConfigError(key, f"sample {index} of column '{column}' has a '{kind}' content part in a "
                                  f"{turn['role']} message: this pipeline trains on text only (multimodal data is not "
                                  "supported)", 'keep only {"type": "text", "text": ...} parts, or remove the sample')
