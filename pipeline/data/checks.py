"""Checks on the rows as read, before any tokenizer: required fields and their types, message shapes, roles,
content parts, per-turn flags.

Each names the first sample at fault in one line (`ConfigError`), so a data mistake costs no model import. Types are
checked here, where the data comes in: a list is never trained as its repr, a flag is never read by truthiness.
Rows are read `BATCH_ROWS` at a time, so the checks hold one batch in memory, never the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
BATCH_ROWS = 10_000
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")  # the spellings of a `train` flag in a string


def batches(dataset: Any, columns: list[str]) -> Iterator[tuple[int, dict[str, list]]]:
    """(index of the batch's first sample, its `columns` as lists): one Arrow read a batch (iterating a Column
    formats row by row, and reading it whole holds every row as Python objects at once)."""
    view = dataset.select_columns(columns)
    for start in range(0, len(view), BATCH_ROWS):
        yield start, view[start:start + BATCH_ROWS]


def kind_of(value: Any) -> str:
    """A value's JSON kind, as an error names it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {list: "a list", dict: "an object", str: "text"}.get(type(value), f"a {type(value).__name__}")


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
# columns read as text: a number is its text (CSV has no types); a list, an object or a boolean is refused
TEXT_COLUMNS = {"alpaca": ("instruction", "input", "output", "system"), "text": ("text",)}
# prompt/completion go to TRL as they are: text, or a list of messages
TEXT_OR_MESSAGES = {"prompt_completion": ("prompt", "completion")}


def check_rows(dataset: Any, fmt: str, key: str = "data.source") -> None:
    """Name the first sample with a missing, empty or mistyped field (CSV gaps, nulls in JSON, a list for text)."""
    required = REQUIRED_TEXT.get(fmt, ())
    typed = [c for c in (*TEXT_COLUMNS.get(fmt, ()), *TEXT_OR_MESSAGES.get(fmt, ())) if c in dataset.column_names]
    if not typed:
        return
    empty: dict[str, list[int]] = {}  # a gap is rarely alone: counted over the whole file, then refused
    for start, batch in batches(dataset, typed):
        for column in typed:
            for offset, value in enumerate(batch[column]):
                if column in required and (value is None or (isinstance(value, str | list) and not value)):
                    empty.setdefault(column, []).append(start + offset)
                    continue
                if value is None or isinstance(value, str):
                    continue
                if column in TEXT_OR_MESSAGES.get(fmt, ()):
                    if not (isinstance(value, list) and all(isinstance(m, dict) for m in value)):
                        raise ConfigError(key, f"sample {start + offset}: '{column}' is {kind_of(value)}, not text "
                                          "or a list of messages", "write it as a string, or as "
                                          '[{"role": ..., "content": ...}]')
                elif isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(key, f"sample {start + offset}: '{column}' is {kind_of(value)}, not text",
                                      "write it as a string (a sample for each answer, not a list of them)")
    for column, samples in sorted(empty.items(), key=lambda item: item[1][0]):  # the first sample's column first
        refuse_empty(samples, f"an empty '{column}'", len(dataset), key, "fill in each one, or remove those samples")


def check_turns(turns_column: list, column: str, key: str = "data.source", start: int = 0) -> None:
    """Every sample's conversation is a non-empty list of messages (objects)."""
    for offset, turns in enumerate(turns_column):
        if not turns:
            raise ConfigError(key, f"sample {start + offset} has no '{column}'", "give every sample at least one turn")
        odd = next((t for t in turns if not isinstance(t, dict)), None) if isinstance(turns, list) else turns
        if odd is not None:
            kind = f"a list of {type(odd).__name__}" if isinstance(turns, list) else f"a {type(odd).__name__}"
            raise ConfigError(key, f"sample {start + offset}: '{column}' is {kind}, not a list of messages",
                              'write it as [{"role": ..., "content": ...}, ...]')


EMPTY_ANSWER = "an empty assistant message (nothing to learn)"
EMPTY_ANSWER_FIX = "write each answer, or remove those samples"


def refuse_empty(empty: list[int], what: str, total: int, key: str, fix: str) -> None:
    """Samples with nothing to learn, found over the whole file: the first named, and how many."""
    if empty:
        many = f"; {len(empty)} of {total} samples have one" if len(empty) > 1 else ""
        raise ConfigError(key, f"sample {empty[0]} has {what}{many}", fix)


def check_roles(conversations: list, key: str = "data.source", column: str = "messages", start: int = 0,
                empty: list[int] | None = None) -> None:
    """Roles, content (text, or text parts), a non-empty assistant answer, and per-turn flags that read as what
    they say. `empty`: samples with an empty answer are noted there (counted, refused later) instead of refused."""
    for offset, messages in enumerate(conversations):
        index = start + offset
        for turn in messages:
            role, content = turn.get("role"), turn.get("content")
            if role not in MESSAGE_ROLES:
                raise ConfigError(key, f"sample {index} has a message with role {role!r}",
                                  f"use roles {', '.join(MESSAGE_ROLES)} (or map them in the file)")
            if content is None and not turn.get("tool_calls"):  # a tool call may come without text
                raise ConfigError(key, f"sample {index} has a {role} message with no content",
                                  "fill it in or remove the sample")
            if content is not None and not isinstance(content, str | list):
                raise ConfigError(key, f"sample {index} has {'an' if role == 'assistant' else 'a'} {role} message "
                                  f"whose content is {kind_of(content)}, not text", "write the content as a string")
            if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
                odd = next(part for part in content if not isinstance(part, dict))
                raise ConfigError(key, f"sample {index} has {'an' if role == 'assistant' else 'a'} {role} message "
                                  f"whose content is a list holding {kind_of(odd)}, not text or text parts",
                                  "write the content as a string (a sample for each answer, not a list of them)")
            kind = non_text_part(content)
            if kind is not None:
                raise ConfigError(key, f"sample {index} of column '{column}' has a '{kind}' content part in a "
                                  f"{role} message: this pipeline trains on text only (multimodal data is not "
                                  "supported)", 'keep only {"type": "text", "text": ...} parts, or remove the sample')
            if role == "assistant":
                if isinstance(content, str) and not content.strip() and not turn.get("tool_calls"):
                    if empty is None:
                        refuse_empty([index], EMPTY_ANSWER, 1, key, EMPTY_ANSWER_FIX)
                    if empty[-1:] != [index]:  # a sample counts once, however many empty answers it has
                        empty.append(index)
                turn_trained(turn, f"sample {index}", key)


def turn_trained(turn: dict, where: str = "a sample", key: str = "data.source") -> bool:
    """An assistant turn carries the loss unless its `train` is false or its `loss_weight` is 0. `train`: a boolean,
    0 or 1, or the strings true/false/yes/no/1/0; `loss_weight`: a number (or one written as a string), 0 or more."""
    train, weight = turn.get("train"), turn.get("loss_weight")
    if train is not None:
        if isinstance(train, bool) or (isinstance(train, int | float) and train in (0, 1)):
            return bool(train)
        spelled = train.strip().lower() if isinstance(train, str) else None
        if spelled not in (*TRUE, *FALSE):
            raise ConfigError(key, f"{where}: an assistant message's 'train' is {train!r}, not true or false",
                              "write true or false")
        return spelled in TRUE
    if weight is None:
        return True
    try:
        value = float(weight) if not isinstance(weight, bool) else None
    except ValueError:
        value = None
    if value is None or value < 0 or value != value:  # noqa: PLR0124 - NaN is not a weight
        raise ConfigError(key, f"{where}: an assistant message's 'loss_weight' is {weight!r}, not a number of 0 or "
                          "more", "write a number: 0 leaves the turn untrained, anything else trains it")
    return value != 0


@dataclass
class Scan:
    """What one pass over the conversations found, so that normalizing need not read them again."""
    flagged: bool = False        # a message carries a per-turn loss flag
    parts: bool = False          # some content comes in parts
    tools: tuple[str, ...] = ()  # what of tool calling the data holds (tools.PARTS)
    without_answer: list[int] = field(default_factory=list)  # samples with no assistant turn

    def add(self, conversations: list, definitions: list | None, start: int) -> list[str]:
        """Add a batch of conversations (the first is sample `start`); returns what of tool calling it uses."""
        from pipeline.data import tools as tool_use

        for offset, turns in enumerate(conversations):
            answered = False
            for turn in turns:
                self.flagged = self.flagged or turn.get("train") is not None or turn.get("loss_weight") is not None
                self.parts = self.parts or isinstance(turn["content"], list)
                answered = answered or turn["role"] == "assistant"
            if not answered:
                self.without_answer.append(start + offset)
        used = tool_use.used(conversations, definitions)
        self.tools = tuple(part for part in tool_use.PARTS if part in {*self.tools, *used})
        return used


def scan(dataset: Any) -> Scan:
    """The Scan of a dataset's `messages` (and `tools`), a batch of rows at a time."""
    from pipeline.data import tools as tool_use

    found = Scan()
    for start, batch in batches(dataset, [c for c in ("messages", tool_use.TOOLS) if c in dataset.column_names]):
        found.add(batch["messages"], batch.get(tool_use.TOOLS), start)
    return found
