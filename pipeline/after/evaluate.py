"""Evaluate a finished run on its own held-out split, base and trained side by side: the loss and perplexity of the
trained tokens, and, where the data has reference answers, greedy answers scored by exact match and by containment.

The held-out split is rebuilt from the run's recorded config exactly as training built it (same seed, same template,
served from the data cache), so the numbers describe data the adapter never trained on.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace
from typing import Any

from pipeline.after import generate, reference
from pipeline.after.finished import FinishedRun
from pipeline.errors import ConfigError


def held_out(run: FinishedRun, tokenizer: Any) -> tuple[Any, Any]:
    """(normalized eval rows, their tokenized and masked form) as the run built them."""
    from pipeline.data import formats, prepare

    config = run.config
    built = formats.build(config.data, tokenizer, config.seed)
    if built.eval is None:
        raise ConfigError("run", f"{run.path} trained without a held-out split (data.val_size=0, no eval_source)",
                          "train with data.val_size > 0 or data.eval_source to evaluate")
    return built.eval, prepare.prepare(built, tokenizer, config).eval


def question_and_answer(row: dict) -> tuple[list[dict], str] | None:
    """The conversation up to its last answer, and that answer (None for text data: nothing to answer)."""
    if "messages" in row:
        last = max((i for i, turn in enumerate(row["messages"]) if turn["role"] == "assistant"), default=None)
        return None if last is None else (row["messages"][:last], row["messages"][last]["content"])
    if "prompt" in row and "completion" in row:
        completion = row["completion"]
        return row["prompt"], completion[0]["content"] if isinstance(completion, list) else completion
    return None


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def scores(model: Any, tokenizer: Any, rows: Any, settings: Any) -> dict | None:
    """Greedy answers to the held-out prompts: how many equal their reference, how many contain it."""
    pairs = [pair for pair in (question_and_answer(row) for row in rows) if pair is not None][:settings.samples]
    if not pairs:
        return None
    greedy = SimpleNamespace(max_new_tokens=settings.max_new_tokens, temperature=0.0, top_p=1.0)
    exact = contains = 0
    for messages, expected in pairs:
        got = normalized(generate.answer(model, tokenizer, messages, greedy, stream=False))
        exact += got == normalized(expected)
        contains += normalized(expected) in got
    return {"prompts": len(pairs), "exact_match": exact, "contains": contains}


def losses(model: Any, tokenized: Any) -> dict:
    values = reference.token_losses(model, [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in tokenized])
    loss = reference.mean(values)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": len(values)}


def evaluate(run: FinishedRun, settings: Any) -> dict:
    """eval loss and answer scores for the trained model, and for its base when `settings.before`."""
    model, tokenizer = generate.load(run, SimpleNamespace(source="adapter", base="as_trained"))
    rows, tokenized = held_out(run, tokenizer)
    result = {"samples": len(tokenized), "after": {**losses(model, tokenized),
                                                  "answers": scores(model, tokenizer, rows, settings)}}
    if settings.before:
        with model.disable_adapter():
            result["before"] = {**losses(model, tokenized), "answers": scores(model, tokenizer, rows, settings)}
    return result


def describe(result: dict) -> list[str]:
    """The lines `evaluate` prints: before -> after."""
    before, after = result.get("before"), result["after"]
    arrow = (lambda key, fmt: f"{fmt.format(before[key])} -> {fmt.format(after[key])}") if before else \
        (lambda key, fmt: fmt.format(after[key]))
    lines = [f"eval loss {arrow('loss', '{:.4f}')} (perplexity {arrow('perplexity', '{:.2f}')}) on "
             f"{result['samples']} held-out samples ({after['tokens']} trained tokens)"]
    if after["answers"]:
        n = after["answers"]["prompts"]
        for key, label in (("exact_match", "exact match"), ("contains", "answer contained")):
            was = f"{before['answers'][key]}/{n} before -> " if before else ""
            lines.append(f"{label} on {n} held-out prompts: {was}{after['answers'][key]}/{n} after")
    return lines
