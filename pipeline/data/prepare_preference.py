"""Preference data measured with TRL's own tokenization, filtered by the length policy, counted and cached.

TRL's preference trainers tokenize their data themselves and accept no tokens, so the rows stay text (prompt and
answers as messages or plain text): `pipeline.compat.trl_preference_tokenize` runs the trainer's own tokenization
with the tokenizer alone, before any weight loads, to measure each row; rows over the limits are dropped (or left
for the trainer to cut: data.overlength=truncate, DPO and KTO) and counted, as for SFT data.
"""

from __future__ import annotations

import statistics
from typing import Any

from pipeline.data.cache import store
from pipeline.data.preference import PAIRS, held_out_conversation
from pipeline.data.prepare import LengthStats, Prepared, warn_about_drops
from pipeline.errors import ConfigError

TRUNCATED_BY_TRL = ("dpo", "kto")  # trainers whose collator cuts a long sequence (keep_start); ORPO's and CPO's cannot


def length_policy(overlength: str, method: str) -> str:
    """auto: drop. truncate: DPO and KTO (TRL cuts each sequence at max_length, keeping its start)."""
    if overlength in ("auto", "drop", "raise"):
        return "drop" if overlength == "auto" else overlength
    if overlength == "truncate" and method in TRUNCATED_BY_TRL:
        return overlength
    why = ("a window of a pair would lose its prompt or its answers" if overlength == "chunk" else
           f"TRL's trainer for method={method} cannot cut a pair to length")
    raise ConfigError("data.overlength", f"{overlength}: {why}", "use drop (or raise)")


def lengths(row: dict, kind: str) -> tuple[int, int]:
    """(prompt tokens, the longer answer's tokens) of a tokenized row."""
    answers = (row["chosen_ids"], row["rejected_ids"]) if kind == PAIRS else (row["completion_ids"],)
    return len(row["prompt_ids"]), max(len(a) for a in answers)


def apply_length_policy(tokenized: Any, kind: str, max_length: int, max_prompt: int | None, policy: str,
                        name: str) -> tuple[Any, LengthStats]:
    """Rows whose prompt passes method.max_prompt_length, and prompt plus longer answer data.max_length (or, with
    truncate, a prompt that leaves room for an answer, as TRL's own filter does): the text rows, and their stats."""
    sizes = [lengths(row, kind) for row in tokenized.select_columns([c for c in tokenized.column_names
                                                                     if c.endswith("_ids")])]
    totals = [p + a for p, a in sizes]
    over = [i for i, total in enumerate(totals) if total > max_length]
    if over and policy == "raise":
        raise ConfigError("data.overlength", f"{len(over)} {name} samples are longer than {max_length} tokens "
                          f"(first: sample {over[0]}, {totals[over[0]]} tokens)",
                          "raise data.max_length, or set data.overlength=drop")
    long_prompt = {i for i, (p, _) in enumerate(sizes) if max_prompt is not None and p > max_prompt}
    cut_off = {i for i, (p, _) in enumerate(sizes) if p >= max_length} if policy == "truncate" else set(over)
    empty = {i for i, (_, a) in enumerate(sizes) if a == 0}
    keep = [i for i in range(len(sizes)) if i not in long_prompt | cut_off | empty]
    if not keep:
        raise ConfigError("data.max_length", f"no {name} sample fits in {max_length} tokens"
                          + (f" with prompts of at most {max_prompt}" if max_prompt else "")
                          + f" (shortest: {min(totals)})", "raise data.max_length (or method.max_prompt_length)")
    per_answer = 2 if kind == PAIRS else 1
    trained = sum(min(a, max_length - p) * per_answer for p, a in (sizes[i] for i in keep))
    ordered = sorted(totals)
    stats = LengthStats(samples=len(keep), min=ordered[0], median=statistics.median(ordered),
                        p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], max=ordered[-1],
                        max_length=max_length, overlength=len(over), dropped_overlength=len(cut_off),
                        truncated=len(over) - len(cut_off & set(over)) if policy == "truncate" else 0,
                        dropped_untrained=len(empty - cut_off - long_prompt), trained_tokens=trained,
                        dropped_long_prompt=len(long_prompt - cut_off))
    text = tokenized.remove_columns([c for c in tokenized.column_names if c.endswith("_ids")])
    return text.select(keep), stats


def prepare(datasets: Any, tokenizer: Any, run: Any, max_length: int, folder: Any, write_cache: bool) -> Prepared:
    """Measured, filtered train/eval rows (text, as the trainer takes them), stored in the cache `folder`
    (`prepare.prepare` looked there first)."""
    from pipeline.compat import trl_preference_tokenize

    policy = length_policy(run.data.overlength, run.method.name)
    parts, stats = {}, {}
    for name, dataset in (("train", datasets.train), ("eval", datasets.eval)):
        if dataset is None:
            continue
        tokenized = trl_preference_tokenize(dataset, tokenizer, datasets.kind)
        parts[name], stats[name] = apply_length_policy(tokenized, datasets.kind, max_length,
                                                       run.method.max_prompt_length, policy, name)
    warn_about_drops(stats)
    prepared = Prepared(parts["train"], parts.get("eval"), stats, folder, False)
    store(run, max_length, folder, prepared, {"format": datasets.format, "tools": [], "kind": datasets.kind,
                                              "conversation": held_out_conversation(prepared)}, write_cache)
    return prepared
