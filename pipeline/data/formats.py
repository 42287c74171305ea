"""Formats: detect -> normalize to TRL's forms -> pick TRL's loss mask -> split (sources: `pipeline.data.sources`).

Everything is normalized to a form TRL's SFTTrainer consumes directly, so tokenization, chat templating,
response-only masking and packing stay TRL's:
  - conversations -> `messages`, content parts joined into text, tool calls and tools in one form (`tools`), (+
                     `assistant_only_loss` when the template marks generations, or TRL ships a version that does;
                     else every assistant turn's span read off the template: `pipeline.data.turns`);
  - alpaca        -> `prompt`/`completion` messages;
  - text          -> `text` (loss on every token).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from pipeline.data import checks, tools
from pipeline.data.checks import check_roles, check_rows, check_turns, part_text
from pipeline.data.sources import TURN_FLAGS, load_source
from pipeline.errors import ConfigError

FORMAT_COLUMNS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
# read when present: LLaMA-Factory's `system` (sharegpt, alpaca), `history` (alpaca: earlier [question, answer])
FORMAT_OPTIONAL_COLUMNS = {"alpaca": ("input", "system", "history"), "messages": (tools.TOOLS,),
                           "sharegpt": (tools.TOOLS, "system")}
MEDIA_COLUMNS = ("images", "image", "audios", "audio", "videos", "video")
TRAINED_TURNS = "trained_turns"  # column: one bool per assistant turn, read by prepare.apply_turn_flags
log = logging.getLogger(__name__)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "model": "assistant", tools.CALL_ROLE: "assistant", tools.RESULT_ROLE: "tool",
                  "tool": "tool"}


@dataclass
class Datasets:
    train: Any
    eval: Any
    format: str                 # the source format (after auto-detection)
    assistant_only_loss: bool   # TRL masks everything but `{% generation %}` spans
    completion_only_loss: bool  # TRL masks the prompt of prompt/completion samples
    dropped_without_answer: int = 0  # conversations with no assistant turn (nothing to train on)
    tools: tuple[str, ...] = ()      # what of tool calling the data holds (`tools.PARTS`: tools, calls, results)
    template_turns: str | None = None  # the template (named) whose assistant turns `pipeline.data.turns` reads off
    kind: str = "sft"           # what the rows train: sft, or preference pairs / labelled answers (data.preference)


# --- formats ---------------------------------------------------------------------------------------------------

def check_kind(columns: list[str], method: str = "sft", key: str = "data.source") -> str:
    """What the data trains (`preference.check_fits`: data made for another objective is refused, naming the method
    to use); images, audio or video are refused too: this pipeline trains on text."""
    from pipeline.data.preference import check_fits

    media = [c for c in MEDIA_COLUMNS if c in columns]
    if media:
        raise ConfigError(key, f"its columns {sorted(columns)} hold multimodal data (column '{media[0]}'); this "
                          "pipeline trains on text only", "give text-only data, or use a vision/audio trainer")
    return check_fits(columns, method, key)


def warn_about_unused_columns(columns: list[str], fmt: str) -> None:
    used = set(FORMAT_COLUMNS[fmt]) | set(FORMAT_OPTIONAL_COLUMNS.get(fmt, ()))
    unused = [c for c in columns if c not in used]
    if unused:
        log.warning("data: columns %s are not used: format %s reads %s (map others with data.columns)", unused, fmt,
                    sorted(used))


def loss_label(fmt: str, loss_on: str) -> str:
    """Which tokens carry the loss, in words: text (continued pre-training) trains on all of them."""
    return "all tokens" if fmt == "text" or loss_on == "all" else "responses"


def describe(fmt: str, loss_on: str, tool_parts: tuple[str, ...] = ()) -> str:
    """The format, its tool use, and which tokens carry the loss, as the header and `preprocess` print them."""
    if fmt not in FORMAT_COLUMNS:  # preference data: its form says what trains (pipeline.data.preference)
        return fmt
    loss = loss_label(fmt, loss_on)
    if "calls" in tool_parts and loss == "responses":
        return f"{fmt} with tool calls, loss on responses and tool calls (not tool results)"
    return f"{fmt}{' with tools' if tool_parts else ''}, loss on {loss}"


def detect_format(columns: list[str]) -> str:
    for fmt, needed in FORMAT_COLUMNS.items():
        if all(c in columns for c in needed):
            return fmt
    raise ConfigError("data.format", f"cannot tell the format from columns {columns}",
                      "set data.format (and data.columns to rename columns)")


def _check_columns(columns: list[str], fmt: str) -> None:
    missing = [c for c in FORMAT_COLUMNS[fmt] if c not in columns]
    if missing:
        raise ConfigError("data.format", f"format '{fmt}' needs columns {list(FORMAT_COLUMNS[fmt])} but the "
                          f"data has {columns}", "set data.format to match, or map columns with data.columns")


def _text(value: Any) -> str:
    """A cell as text: CSV numbers become strings; missing values become empty."""
    return "" if value is None else str(value)


def _alpaca_question(row: dict) -> str:
    instruction, input_ = _text(row["instruction"]), _text(row.get("input"))
    return f"{instruction}\n\n{input_}" if input_ else instruction


def _alpaca_to_prompt_completion(row: dict) -> dict:
    return {"prompt": [{"role": "user", "content": _alpaca_question(row)}],
            "completion": [{"role": "assistant", "content": _text(row["output"])}]}


def _system_message(row: dict, index: int) -> list[dict]:
    """LLaMA-Factory's `system` column as the conversation's first message (none when empty)."""
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigError("data.source", f"sample {index}: its 'system' is a {type(system).__name__}, not text",
                          "give the system prompt as a string, or drop the column")
    return [{"role": "system", "content": system}] if system else []


def alpaca_to_messages(row: dict, index: int, mask_history: bool) -> dict:
    """LLaMA-Factory's alpaca with `system` and `history` ([[question, answer], ...] before this one): a conversation
    whose earlier answers train too (LLaMA-Factory's default), or are context only with data.mask_history=true."""
    history = row.get("history") or []
    if not isinstance(history, list) or any(not isinstance(pair, list) or len(pair) != 2 or
                                            not all(isinstance(x, str) for x in pair) for pair in history):
        raise ConfigError("data.source", f"sample {index}: its 'history' is not a list of [question, answer] pairs of "
                          "text", 'write it as [["an earlier question", "its answer"], ...], or drop the column')
    earlier = [{"role": "assistant", "content": answer, **({"train": False} if mask_history else {})}
               for _, answer in history]
    messages = _system_message(row, index)
    for (question, _), answer in zip(history, earlier, strict=True):
        messages += [{"role": "user", "content": question}, answer]
    return {"messages": messages + [{"role": "user", "content": _alpaca_question(row)},
                                    {"role": "assistant", "content": _text(row["output"])}]}


def content_text(content: Any) -> Any:
    """Content parts (`[{"type": "text", "text": ...}, ...]`) as one string, the text parts joined by line breaks; a
    string (or anything else, refused by `checks.check_roles`) as it is."""
    if isinstance(content, list):
        return "\n".join(part_text(part) for part in content)
    return content


def _joined_parts(row: dict) -> dict:
    return {"messages": [{**turn, "content": content_text(turn["content"])} for turn in row["messages"]]}


def _sharegpt_to_messages(row: dict, index: int) -> dict:
    """from/value turns (ShareGPT) or role/content turns under a `conversations` column -> messages; glaive's
    `function_call` turns become assistant tool calls, `observation` turns tool results."""
    messages = []
    for turn in row["conversations"] or []:
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in SHAREGPT_ROLES or content is None:
            raise ConfigError("data.format", f"sample {index}: a conversation turn has role {role!r} and content "
                              f"{content!r}", f"use roles {sorted(SHAREGPT_ROLES)} with from/value or role/content "
                              "keys")
        message = {"role": SHAREGPT_ROLES[role], "content": content}
        if role == tools.CALL_ROLE:
            message = {"role": "assistant", "content": "",
                       "tool_calls": tools.function_calls(content, f"sample {index}")}
        messages.append({**message, **{flag: turn[flag] for flag in TURN_FLAGS if turn.get(flag) is not None}})
    if messages and messages[0]["role"] == "system":
        return {"messages": messages}
    return {"messages": _system_message(row, index) + messages}


def has_generation_markers(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def use_training_template(tokenizer: Any) -> bool:
    """Give the tokenizer a template with `{% generation %}` markers: its own, or TRL's patched version for the
    families TRL knows (Llama 3, Qwen 2.5/3, Phi-3, Gemma, ...). False when neither exists."""
    if has_generation_markers(tokenizer):
        return True
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:  # a template TRL cannot patch
        return False
    if patched:
        tokenizer.chat_template = patched
    return has_generation_markers(tokenizer)


def _trained_turns(row: dict) -> dict:
    return {TRAINED_TURNS: [checks.turn_trained(turn) for turn in row["messages"] if turn["role"] == "assistant"]}


def normalize(dataset: Any, fmt: str, loss_on: str, tokenizer: Any, template: str = "the chat template",
              mask_history: bool = False, scan: checks.Scan | None = None) -> Datasets:
    """Rewrite rows into TRL's form (`template` names the chat template in errors): the rows as `train`, no `eval`.
    `scan`: what reading found in the conversations (else they are scanned here)."""
    columns = dataset.column_names
    responses = loss_on == "responses"
    if mask_history and not (fmt == "alpaca" and "history" in columns):
        log.warning("data: data.mask_history is not used: it applies to alpaca rows with a history column, and this "
                    "%s data has none", fmt)
    if fmt == "text":
        return Datasets(dataset.select_columns(["text"]).map(lambda r: {"text": _text(r["text"])}), None, fmt,
                        False, False)
    if fmt == "prompt_completion":
        return Datasets(dataset.select_columns(["prompt", "completion"]), None, fmt, False, responses)
    if fmt == "alpaca" and {"system", "history"} & set(columns):  # a conversation: trained turn by turn below
        dataset = dataset.map(alpaca_to_messages, with_indices=True, fn_kwargs={"mask_history": mask_history},
                              remove_columns=columns, desc="Reading history")
    elif fmt == "alpaca":
        dataset = dataset.map(_alpaca_to_prompt_completion, remove_columns=columns)
        if not responses:  # whole conversation trained: plain messages
            return Datasets(dataset.map(lambda r: {"messages": r["prompt"] + r["completion"]},
                                        remove_columns=["prompt", "completion"]), None, fmt, False, False)
        return Datasets(dataset, None, fmt, False, True)
    if fmt == "sharegpt":
        dataset = dataset.map(_sharegpt_to_messages, with_indices=True,
                              remove_columns=[c for c in columns if c != tools.TOOLS])
    dataset = dataset.select_columns([c for c in ("messages", tools.TOOLS) if c in dataset.column_names])
    found = scan or checks.scan(dataset)
    flagged, in_parts, tool_parts = found.flagged, found.parts, found.tools
    if in_parts:
        dataset = dataset.map(_joined_parts, desc="Joining content parts")
    marked = responses and use_training_template(tokenizer)  # first: what is checked is the template that trains
    if tool_parts:  # what the template must render: checked before a token is made
        tools.check_renders(tokenizer, tool_parts, template)
        dataset = dataset.map(tools.normalize_row, with_indices=True, features=tools.features(dataset),
                              desc="Reading tool calls")
    elif tools.TOOLS in dataset.column_names:  # a tools column with no tools in it
        dataset = dataset.remove_columns(tools.TOOLS)
    if not responses:
        if flagged:
            log.warning("data: the messages' per-turn loss flags (train / loss_weight) are not used: "
                        "data.loss_on=all trains every token")
        return Datasets(dataset, None, fmt, False, False, tools=tool_parts)
    without = set(found.without_answer)
    with_answer = dataset.select([i for i in range(len(dataset)) if i not in without]) if without else dataset
    dropped = len(without)
    if flagged:  # per-turn flags: prepare masks the assistant turns whose flag is off
        with_answer = with_answer.map(_trained_turns, desc="Reading per-turn loss flags")
    if marked:  # TRL's masks, from the template's {% generation %} markers
        return Datasets(with_answer, None, fmt, True, False, dropped, tool_parts)
    # no markers, and TRL ships no marked version: every assistant turn's span is read off the template itself
    return Datasets(with_answer, None, fmt, False, False, dropped, tool_parts, template_turns=template)


def held_out_conversation(datasets: Datasets) -> dict | None:
    """The first held-out conversation (a training one without an eval split) as the chat template renders it in
    training: its messages (a prompt with its completion) and tools; None for text and plain prompt/completion."""
    rows = datasets.eval if datasets.eval is not None and len(datasets.eval) else datasets.train
    row = rows[0]
    messages = row.get("messages") or (row["prompt"] + row["completion"] if isinstance(row.get("prompt"), list)
                                       else None)
    return None if messages is None else {"messages": messages, tools.TOOLS: row.get(tools.TOOLS)}


def eval_count(val_size: float, available: int) -> int:
    """How many samples data.val_size holds out of `available` (a fraction or a count); refused if it is all."""
    count = int(val_size) if val_size >= 1 else max(1, round(available * val_size))
    if count >= available:
        raise ConfigError("data.val_size", f"{val_size} leaves no training samples out of {available}",
                          "lower data.val_size")
    return count


def split(dataset: Any, val_size: float, seed: int) -> tuple[Any, Any]:
    if not val_size:
        return dataset, None
    parts = dataset.train_test_split(test_size=eval_count(val_size, len(dataset)), seed=seed, shuffle=True)
    return parts["train"], parts["test"]


@dataclass
class Raw:
    """The rows as read, format known and required fields checked: what needs no tokenizer."""
    dataset: Any
    eval_dataset: Any  # data.eval_source, or None
    format: str
    scan: checks.Scan | None = None       # what reading found in the conversations (normalize reads them no more)
    eval_scan: checks.Scan | None = None


def read(data: Any, method: str = "sft") -> Raw:
    """Load data.source (and data.eval_source), tell the format, check columns and required fields: the mistakes
    found here cost no model import."""
    dataset = load_source(data)
    kind = check_kind(dataset.column_names, method)
    if kind != "sft":  # preference data, in TRL's forms row by row
        from pipeline.data import preference

        return preference.read(data, dataset, kind, method)
    fmt = detect_format(dataset.column_names) if data.format == "auto" else data.format
    if data.format == "auto":
        log.info("data: format detected from columns %s: %s", dataset.column_names, fmt)
    scanned = check_read(dataset, fmt)
    held_out = held_out_scan = None
    if data.eval_source not in (None, "", []):
        held_out = load_source(data, data.eval_source, key="data.eval_source")
        _check_columns(held_out.column_names, fmt)
        held_out_scan = _check_conversations(held_out, fmt, "data.eval_source")
    elif data.val_size:
        eval_count(data.val_size, len(dataset))  # checked now; the split itself follows normalization
    return Raw(dataset, held_out, fmt, scanned, held_out_scan)


def check_read(dataset: Any, fmt: str) -> checks.Scan | None:
    """What reading checks in rows of `fmt`: the format's columns, then every row's fields."""
    _check_columns(dataset.column_names, fmt)
    warn_about_unused_columns(dataset.column_names, fmt)
    return _check_conversations(dataset, fmt)


def _check_conversations(dataset: Any, fmt: str, key: str = "data.source") -> checks.Scan | None:
    """Required fields, then (conversations) every turn's role and content, and the tool calls and tools; returns
    what the pass over the conversations found."""
    if fmt not in ("messages", "sharegpt"):
        check_rows(dataset, fmt, key)
        if fmt == "alpaca" and {"system", "history"} & set(dataset.column_names):
            for index, row in enumerate(dataset.select_columns([c for c in ("system", "history", "instruction",
                                                                           "input", "output") if c in
                                                                dataset.column_names])):
                try:
                    alpaca_to_messages(row, index, False)
                except ConfigError as error:
                    raise ConfigError(key, error.problem, error.fix) from error
        return None
    column = "messages" if fmt == "messages" else "conversations"
    wanted = [c for c in (column, "system", tools.TOOLS) if c in dataset.column_names]
    found = checks.Scan()
    empty: list[int] = []  # samples with an empty answer: counted over the whole file, then refused
    try:
        for start, batch in checks.batches(dataset, wanted):  # a batch at a time: memory stays flat
            check_turns(batch[column], column, key, start)
            rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
            conversations = batch[column] if fmt == "messages" else \
                [_sharegpt_to_messages(row, start + i)["messages"] for i, row in enumerate(rows)]
            check_roles(conversations, key, column, start, empty)
            definitions = batch.get(tools.TOOLS) or [None] * len(conversations)
            if found.add(conversations, definitions, start):  # this batch uses tool calling: its calls checked
                for offset, (messages, definition) in enumerate(zip(conversations, definitions, strict=True)):
                    tools.normalize_row({"messages": messages, tools.TOOLS: definition}, start + offset)
        checks.refuse_empty(empty, checks.EMPTY_ANSWER, len(dataset), key, checks.EMPTY_ANSWER_FIX)
    except ConfigError as error:  # the sample is named; the key says which source holds it
        if error.key != "data.source":
            raise
        raise ConfigError(key, error.problem, error.fix) from error
    return found


def build(data: Any, tokenizer: Any, seed: int, raw: Raw | None = None, template: str | None = None,
          method: str = "sft") -> Datasets:
    """Normalize and split the configured data (read now unless `raw` is given) for SFTTrainer; `template` is
    model.chat_template (None: the tokenizer's own), named in errors."""
    raw = raw or read(data, method)
    if raw.format in ("pairs", "labelled"):
        from pipeline.data.preference import build

        return build(data, raw, seed, method)
    dataset, fmt = raw.dataset, raw.format
    if fmt not in ("text", "prompt_completion") and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.chat_template", "the tokenizer has no chat template for this conversational data",
                          "set model.chat_template, e.g. model.chat_template=chatml")
    label = f"the chat template '{template}'" if template else "the tokenizer's own chat template"
    normalized = normalize(dataset, fmt, data.loss_on, tokenizer, label, data.mask_history, raw.scan)
    dataset, dropped = normalized.train, normalized.dropped_without_answer
    if len(dataset) == 0:
        raise ConfigError("data.source", f"none of its {dropped} conversations has an assistant answer: nothing "
                          "to train on", "add assistant turns, or train on every token with data.loss_on=all")
    if raw.eval_dataset is not None:
        held_out = normalize(raw.eval_dataset, fmt, data.loss_on, tokenizer, label, data.mask_history, raw.eval_scan)
        train, evaluation, dropped = dataset, held_out.train, dropped + held_out.dropped_without_answer
    else:
        train, evaluation = split(dataset, data.val_size, seed)
    if data.max_samples and len(train) > data.max_samples:  # a cap on training samples only
        train = train.select(range(data.max_samples))
    if dropped:
        log.info("data: %d conversations without an assistant answer dropped", dropped)
    return dataclasses.replace(normalized, train=train, eval=evaluation, dropped_without_answer=dropped)
