"""Every assistant turn's tokens, read off any chat template: the loss mask where the template marks no turns.

TRL trains exactly the assistant turns when the chat template wraps them in `{% generation %}` markers, and ships
marked copies of a few templates (Qwen 2.5/3, Llama 3.0, Gemma, Phi-3). For every other template (Llama 3.1-3.3,
Mistral, Gemma 2, most hub templates) the spans come from the template itself, by rendering:

- where turn i starts: the conversation up to it, rendered with the generation prompt (`P_i`), is how the whole
  conversation (`T`) reads up to the first token the model writes (a template that renders the earlier part otherwise
  once later turns follow, as Mistral's places the system prompt before the last question, starts the turn at its
  answer's text);
- where it ends: the conversation through turn i (`Q_i`) goes on after the turn's content with its end-of-turn text
  (`<|eot_id|>`, `</s>`, `<end_of_turn>\\n`, `<|im_end|>\\n`); `T` goes on after the same content with the same text,
  then with the next turn. The turn ends where the two part, on a token boundary. A turn's content end is found by
  marking every answer with a private-use character and rendering once more, so a template that renders earlier
  turns otherwise than the last one (Qwen 3 drops their reasoning) still gives each turn's own end.

Tool-call turns are assistant turns like the others. The spans become a token mask as transformers turns
`{% generation %}` spans into `assistant_masks` (`char_to_token` of the first and last character), so where a template
has markers the two agree token for token (tests/test_turns.py). A template that cannot be split this way is refused
in one line naming `model.chat_template`; nothing falls back to training the last answer only.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError

MARK = "\ue000"  # appended to each answer's text to find where it ends in a rendering (never in real text)
IGNORE = -100


class Unsplittable(Exception):
    """The template's rendering of a conversation cannot be split into its assistant turns."""


def render(tokenizer: Any, messages: list[dict], tools: Any, generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it (`tools` as a list, or as the JSON string a dataset keeps)."""
    import json

    tools = json.loads(tools) if isinstance(tools, str) else tools
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def with_marks(messages: list[dict], before: bool = False) -> list[dict]:
    """The messages with MARK after (or before) the text of each assistant answer that has text."""
    return [{**m, "content": MARK + m["content"] if before else m["content"] + MARK}
            if m["role"] == "assistant" and m.get("content") else m for m in messages]


def end_of_turn(tokenizer: Any) -> str | None:
    """What the chat template writes after an answer, white space aside (`<|eot_id|>`, `<end_of_turn>`, `</s>`): the
    text a server must stop at. None when it writes nothing there, or renders no plain conversation."""
    probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!" + MARK}]
    try:
        text = render(tokenizer, probe, None)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation names no end of turn
        return None
    return text.split(MARK, 1)[-1].strip() or None if MARK in text else None


def mark_positions(marked: str) -> list[int]:
    """Where each MARK stood in the rendering with the marks removed."""
    positions, found = [], marked.find(MARK)
    while found != -1:
        positions.append(found - len(positions))
        found = marked.find(MARK, found + 1)
    return positions


def common_length(a: str, b: str) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def token_start(encoding: Any, position: int) -> int:
    """`position`, moved back to the start of the token it falls inside."""
    token = encoding.char_to_token(position)
    return position if token is None else encoding.token_to_chars(token)[0]


def common_tokens_end(tokenizer: Any, full: str, encoding: Any, at_full: int, other: str, at_other: int) -> int:
    """Where `full` and `other` stop agreeing after positions that hold the same text: the end of the last token
    both tokenize alike from there (tokens, not characters: `<|end|>\n<|user|>` and `<|end|>\n<|endoftext|>` share
    `<|`, but no token)."""
    other_encoding = tokenizer(other, add_special_tokens=False)
    token, other_token = encoding.char_to_token(at_full), other_encoding.char_to_token(at_other)
    if token is None or other_token is None:
        return at_full
    start, _ = encoding.token_to_chars(token)
    other_start, _ = other_encoding.token_to_chars(other_token)
    if at_full - start != at_other - other_start:  # the shared text begins inside tokens cut otherwise
        return at_full
    ids, other_ids = encoding["input_ids"], other_encoding["input_ids"]
    end = start
    while token < len(ids) and other_token < len(other_ids) and ids[token] == other_ids[other_token]:
        end = encoding.token_to_chars(token)[1]
        token, other_token = token + 1, other_token + 1
    return end


def char_spans(tokenizer: Any, messages: list[dict], tools: Any, full: str, encoding: Any) -> list[tuple[int, int]]:
    """The character span of each assistant turn in `full` (the conversation's rendering, tokenized as `encoding`):
    from the first character the model writes to the end of the turn's end-of-turn text."""
    answered = [i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("content")]
    marked_full = render(tokenizer, with_marks(messages), tools)
    ends = mark_positions(marked_full)
    if marked_full.replace(MARK, "") != full or len(ends) != len(answered):
        raise Unsplittable("it renders an answer's text otherwise when the text changes")
    content_end = dict(zip(answered, ends, strict=True))
    content_start: dict[int, int] | None = None  # read only for a template that needs it
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], tools, generation_prompt=True) if i else ""
        if full.startswith(prompt):
            start = len(prompt)
        else:  # rendered otherwise when later turns follow (Mistral puts the system prompt before the last question)
            if content_start is None:
                marked = render(tokenizer, with_marks(messages, before=True), tools)
                content_start = dict(zip(answered, mark_positions(marked), strict=False))
            # a message with no text (a tool call alone) starts where the two renderings part, on a token boundary
            start = content_start[i] if i in content_start else token_start(encoding, common_length(full, prompt))
        marked_through = render(tokenizer, with_marks(messages[:i + 1]), tools)
        through = marked_through.replace(MARK, "")
        if i in content_end:  # compare what follows the answer's own text: its end-of-turn text, then the rest
            at_full, at_through = content_end[i], mark_positions(marked_through)[-1]
        elif through[:start] == full[:start]:  # no text (a tool call alone): compare from where the turn starts
            at_full = at_through = start
        else:
            raise Unsplittable(f"message {i} does not follow its own generation prompt")
        end = common_tokens_end(tokenizer, full, encoding, at_full, through, at_through)
        if end <= start or (spans and start < spans[-1][1]):
            raise Unsplittable(f"message {i} has no tokens of its own")
        spans.append((start, end))
    return spans


def token_mask(encoding: Any, spans: list[tuple[int, int]], length: int) -> list[int]:
    """1 for every token of the spans, as transformers builds `assistant_masks` from `{% generation %}` spans."""
    mask = [0] * length
    for start_char, end_char in spans:
        start = encoding.char_to_token(start_char)
        end = encoding.char_to_token(end_char - 1)
        if start is None:
            break
        for token in range(start, end + 1 if end is not None else length):
            mask[token] = 1
    return mask


def labels_for(tokenizer: Any, messages: list[dict], tools: Any, input_ids: list[int]) -> list[int]:
    """The labels of one tokenized conversation: its ids on the assistant turns' tokens, IGNORE elsewhere."""
    import json

    tools = json.loads(tools) if isinstance(tools, str) else tools  # parsed once for the renderings below
    full = render(tokenizer, messages, tools)
    encoding = tokenizer(full, add_special_tokens=False)
    if encoding["input_ids"] != list(input_ids):
        raise Unsplittable("its rendering tokenizes otherwise than the sample was tokenized")
    mask = token_mask(encoding, char_spans(tokenizer, messages, tools, full, encoding), len(input_ids))
    return [token if bit else IGNORE for token, bit in zip(input_ids, mask, strict=True)]


def mask_assistant_turns(dataset: Any, tokenizer: Any, name: str, template: str, num_proc: int | None = None) -> Any:
    """Labels on every assistant turn (and its end-of-turn text) of each conversation, nothing else trained."""

    def mask(row: dict, index: int) -> dict:
        try:
            return {"labels": labels_for(tokenizer, row["messages"], row.get("tools"), row["input_ids"])}
        except Unsplittable as error:
            raise ConfigError("model.chat_template", f"{template} cannot be split into assistant turns ({name} "
                              f"sample {index}: {error})", "use a template that marks assistant turns with "
                              "{% generation %}, or train every token with data.loss_on=all") from error

    return dataset.map(mask, with_indices=True, num_proc=num_proc, desc=f"Masking assistant turns ({name})")
