"""Preference data: which objective the data is made for, refusals naming the method to use, and the forms people
have normalized to TRL's (method=dpo | orpo | simpo read pairs; method=kto reads answers labelled one by one).

Read (`data.format=auto`, told apart by their columns and the type of `chosen`):
  pairs     TRL's `prompt`/`chosen`/`rejected`, plain text or conversations, the prompt given or implicit (chosen
            and rejected whole conversations or texts sharing it: TRL's `extract_prompt`); LLaMA-Factory's ranking
            forms: sharegpt/OpenAI `conversations` or `messages` with `chosen`/`rejected` message objects (and a
            `system` column), alpaca `instruction` (`input`, `system`, `history`) with `chosen`/`rejected` texts.
  labelled  TRL's `prompt`/`completion`/`label`; LLaMA-Factory's `messages` or `conversations` (the last turn is the
            answer) with `label` (its dataset_info's `kto_tag`); alpaca `instruction`/`output` with `label`.
Written: pairs as `prompt`/`chosen`/`rejected`, labelled rows as `prompt`/`completion`/`label` (a bool): messages
(the prompt a conversation, the answers one assistant message each) unless the data is plain text, which TRL trains
as written, without a chat template.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError

SFT, PAIRS, LABELLED = "sft", "pairs", "labelled"
METHOD_DATA = {"sft": SFT, "dpo": PAIRS, "orpo": PAIRS, "simpo": PAIRS, "kto": LABELLED}
LABEL_COLUMNS = ("label", "kto_tag")
ANSWER_COLUMNS = ("completion", "messages", "conversations", "output")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "system": "system"}
TRUE, FALSE = ("true", "yes", "1", "desirable"), ("false", "no", "0", "undesirable")
PAIR_FORMS = ("TRL's prompt, chosen and rejected (conversations or text; the prompt may be left implicit), or "
              "LLaMA-Factory's ranking forms (conversations or messages, or instruction, with chosen and rejected)")
LABELLED_FORMS = ("TRL's prompt, completion and label, or LLaMA-Factory's messages (or conversations) with label")


def kind_of(columns: list[str]) -> str:
    """What the columns are made for: SFT, preference pairs (DPO, ORPO, SimPO) or labelled answers (KTO)."""
    present = set(columns)
    if {"chosen", "rejected"} <= present:
        return PAIRS
    if present & set(LABEL_COLUMNS) and present & set(ANSWER_COLUMNS):
        return LABELLED
    return SFT


def check_fits(columns: list[str], method: str, key: str = "data.source") -> str:
    """The data's kind when `method` trains on it; else one line naming the method that would (no data is ever
    trained under the wrong objective). KTO takes pairs too: each becomes a desirable and an undesirable answer."""
    kind, wanted = kind_of(columns), METHOD_DATA[method]
    if kind == wanted or (kind == PAIRS and wanted == LABELLED):
        return kind
    shown = sorted(columns)
    if kind == PAIRS:
        raise ConfigError(key, f"its columns {shown} hold preference pairs (chosen/rejected), which method=sft would "
                          "train as plain answers", "train them with method=dpo (or orpo, simpo, kto)")
    if kind == LABELLED:
        column = next(c for c in LABEL_COLUMNS if c in columns)
        if wanted == SFT:
            raise ConfigError(key, f"its columns {shown} hold answers labelled desirable or not ('{column}'), and "
                              "method=sft would train the undesirable ones too", "train them with method=kto")
        raise ConfigError(key, f"method={method} trains on pairs of answers, and its columns {shown} hold answers "
                          f"labelled one by one ('{column}')", "train them with method=kto, or give pairs: "
                          + PAIR_FORMS)
    forms = PAIR_FORMS if wanted == PAIRS else LABELLED_FORMS
    raise ConfigError(key, f"method={method} needs {forms}; its columns {shown} hold SFT data",
                      "give such data, or train this data with method=sft")


# --- values as they come in -------------------------------------------------------------------------------------

def read_label(value: Any, where: str) -> bool:
    """A KTO label: a bool, 0/1, or the words true/false (yes/no, desirable/undesirable); anything else refused,
    never read by truthiness ("false" is not true)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ConfigError("data.source", f"{where}: its label {value!r} is not true or false",
                      "write labels as true / false (JSON booleans)")


def _text(value: Any, what: str, where: str) -> str:
    from pipeline.data.formats import content_text

    value = content_text(value)
    if not isinstance(value, str):
        raise ConfigError("data.source", f"{where}: its {what} is {type(value).__name__}, not text",
                          f"write the {what} as a string")
    return value


def _message(turn: Any, what: str, where: str) -> dict:
    """A role/content or from/value message as {"role", "content"} (content parts joined into text)."""
    if not isinstance(turn, dict):
        raise ConfigError("data.source", f"{where}: its {what} is {type(turn).__name__}, not a message",
                          'write it as {"role": "assistant", "content": "..."}')
    role = turn.get("role", turn.get("from"))
    if role not in ROLES:
        raise ConfigError("data.source", f"{where}: a message of its {what} has role {role!r}",
                          f"use roles {sorted(ROLES)}")
    return {"role": ROLES[role], "content": _text(turn.get("content", turn.get("value")), what, where)}


def _messages(turns: Any, what: str, where: str) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise ConfigError("data.source", f"{where}: its {what} is {type(turns).__name__ if turns else 'empty'}, "
                          "not a list of messages", 'write it as [{"role": "user", "content": "..."}, ...]')
    return [_message(turn, what, where) for turn in turns]


def _answer(value: Any, what: str, where: str) -> list[dict]:
    """One answer as a one-message conversation: a message object, a list ending in the assistant's, or text."""
    if isinstance(value, dict):
        message = _message(value, what, where)
    elif isinstance(value, list):
        message = _messages(value, what, where)[-1]
    else:
        message = {"role": "assistant", "content": _text(value, what, where)}
    if message["role"] != "assistant":
        raise ConfigError("data.source", f"{where}: its {what} is a {message['role']} message, not the assistant's",
                          "give the answer as the assistant's message")
    return [message]


def _alpaca_prompt(row: dict, index: int) -> list[dict]:
    """instruction (+ input, system, history) as a conversation that ends with the question (LLaMA-Factory)."""
    from pipeline.data.formats import alpaca_to_messages

    where = f"sample {index}"
    question = {**row, "instruction": _text(row["instruction"], "instruction", where), "output": ""}
    return alpaca_to_messages(question, index, mask_history=False)["messages"][:-1]


def _prompt_of(row: dict, index: int) -> list[dict]:
    """The conversation before the answer: LLaMA-Factory's turns (with its system column) or an alpaca question."""
    where = f"sample {index}"
    if "instruction" in row:
        return _alpaca_prompt(row, index)
    turns = _messages(row.get("conversations") or row.get("messages") or row.get("prompt"), "prompt", where)
    system = row.get("system")
    if system and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": _text(system, "system", where)}, *turns]
    if turns[-1]["role"] != "user":
        raise ConfigError("data.source", f"{where}: its prompt ends with a {turns[-1]['role']} turn, not the user's",
                          "end the prompt with the question the answers reply to")
    return turns


# --- rows -> TRL's forms -------------------------------------------------------------------------------------------

def is_plain(row: dict, kind: str) -> bool:
    """TRL's plain-text form (no chat template): text answers with a text prompt or none, no question columns."""
    answer = row["chosen"] if kind == PAIRS else row.get("completion")
    questions = {"instruction", "messages", "conversations"} & set(row)
    return isinstance(answer, str) and not questions and isinstance(row.get("prompt", ""), str)


def to_pair(row: dict, index: int, plain: bool) -> dict:
    where = f"sample {index}"
    if plain:
        prompt = row.get("prompt")
        texts = {k: _text(row[k], k, where) for k in ("chosen", "rejected")}
        if prompt is None:  # implicit: the shared beginning of the two texts (TRL's own rule)
            from trl.data_utils import extract_prompt

            return extract_prompt(texts)
        return {"prompt": _text(prompt, "prompt", where), **texts}
    if isinstance(row["chosen"], list) and row.get("prompt") is None and not {"instruction", "messages",
                                                                               "conversations"} & set(row):
        from trl.data_utils import extract_prompt  # implicit: whole conversations sharing their beginning

        row = extract_prompt({k: _messages(row[k], k, where) for k in ("chosen", "rejected")})
    if isinstance(row.get("prompt"), str):
        row = {**row, "prompt": [{"role": "user", "content": row["prompt"]}]}
    return {"prompt": _prompt_of(row, index), "chosen": _answer(row["chosen"], "chosen", where),
            "rejected": _answer(row["rejected"], "rejected", where)}


def to_labelled(row: dict, index: int, plain: bool) -> dict:
    where = f"sample {index}"
    label = read_label(row[next(c for c in LABEL_COLUMNS if c in row)], where)
    if plain:
        return {"prompt": _text(row.get("prompt") or "", "prompt", where),
                "completion": _text(row["completion"], "completion", where), "label": label}
    if "output" in row and "instruction" in row:
        return {"prompt": _alpaca_prompt(row, index), "completion": _answer(row["output"], "output", where),
                "label": label}
    if row.get("completion") is not None and row.get("prompt") is not None:
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        return {"prompt": _prompt_of({"prompt": prompt}, index),
                "completion": _answer(row["completion"], "completion", where), "label": label}
    turns = _messages(row.get("messages") or row.get("conversations") or row.get("completion"), "conversation",
                      where)  # the last turn is the answer (LLaMA-Factory's KTO, argilla's kto-mix)
    if len(turns) < 2:
        raise ConfigError("data.source", f"{where}: its conversation has no question before the answer",
                          "give the user's turn and the assistant's answer")
    return {"prompt": _prompt_of({"messages": turns[:-1], "system": row.get("system")}, index),
            "completion": _answer(turns[-1], "answer", where), "label": label}


def read(data: Any, dataset: Any, kind: str, method: str) -> Any:
    """`formats.read` for preference data: the rows (and data.eval_source's) in TRL's forms, the split checked."""
    from pipeline.data.formats import Raw, check_kind, eval_count
    from pipeline.data.sources import load_source

    dataset, held_out = normalize(dataset, kind), None  # the rows' own mistakes first
    if data.eval_source not in (None, "", []):
        held_out = load_source(data, data.eval_source, key="data.eval_source")
        check_kind(held_out.column_names, method, "data.eval_source")
        held_out = normalize(held_out, kind, "data.eval_source")
    elif data.val_size:
        eval_count(data.val_size, len(dataset))
    return Raw(dataset, held_out, kind)


def normalize(dataset: Any, kind: str, key: str = "data.source") -> Any:
    """Every row in TRL's form for its kind; the form (plain or conversational) is the first row's, and a row in
    the other one is refused by number."""
    columns = dataset.column_names
    plain = is_plain(dataset[0], kind)
    convert = to_pair if kind == PAIRS else to_labelled

    def one(row: dict, index: int) -> dict:
        if is_plain(row, kind) != plain:
            raise ConfigError(key, f"sample {index} is {'plain text' if not plain else 'a conversation'} where "
                              f"sample 0 is {'plain text' if plain else 'a conversation'}",
                              "give every sample in one form")
        return convert(row, index, plain)

    try:
        normalized = dataset.map(one, with_indices=True, remove_columns=columns, desc="Reading preference data")
    except ConfigError as error:
        raise ConfigError(key, error.problem, error.fix) from error
    if kind == LABELLED:  # Arrow keeps a column's old type when the map writes the same name (0 for False)
        from datasets import Value

        normalized = normalized.cast_column("label", Value("bool"))
    return normalized


def build(data: Any, raw: Any, seed: int, method: str) -> Any:
    """Preference rows (in TRL's forms since `read`), split like SFT data; for KTO, pairs become one desirable and
    one undesirable answer each, shuffled (TRL's KTO samples in order, and would see all the desirable ones first)."""
    from trl.data_utils import unpair_preference_dataset

    from pipeline.data.formats import Datasets, split

    dataset, held_out = raw.dataset, raw.eval_dataset
    plain = isinstance(dataset[0]["prompt"], str)
    train, evaluation = (dataset, held_out) if held_out is not None else split(dataset, data.val_size, seed)
    kind = METHOD_DATA[method]
    if raw.format == PAIRS and kind == LABELLED:
        train = unpair_preference_dataset(train).shuffle(seed=seed)
        evaluation = unpair_preference_dataset(evaluation) if evaluation is not None else None
    if data.max_samples and len(train) > data.max_samples:
        train = train.select(range(data.max_samples))
    return Datasets(train, evaluation, describe(raw.format, plain, method), False, False, kind=kind)


def held_out_conversation(prepared: Any) -> dict | None:
    """A held-out prompt with its (chosen) answer, as the template renders it in training; None for plain text."""
    row = (prepared.eval if prepared.eval is not None and len(prepared.eval) else prepared.train)[0]
    answer = row.get("chosen", row.get("completion"))
    return {"messages": row["prompt"] + answer, "tools": None} if isinstance(answer, list) else None


def describe(kind: str, plain: bool, method: str) -> str:
    """The data's form as the header and `preprocess` print it."""
    form = "plain text" if plain else "conversations"
    if kind == PAIRS and method == "kto":
        return f"preference pairs ({form}), each as a desirable and an undesirable answer (KTO)"
    return f"preference pairs ({form})" if kind == PAIRS else f"answers labelled desirable or not ({form})"
