"""Held-out preference scores of a finished preference run, at its start and at its end.

Pairs: how often the chosen answer is the likelier one (log-probability summed over its tokens, given the prompt,
tokenized as TRL's DPOTrainer does), and the mean margin between them. Labelled answers (KTO): the mean per-token
log-probability of desirable answers minus that of undesirable ones. The start is the base (the adapter switched
off), or init_from's adapter for a run that continued one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pipeline.after import reference
from pipeline.data.preference import PAIRS


def log_probabilities(model: Any, tokenizer: Any, rows: Any, kind: str) -> list[dict]:
    """Per row: the answers' summed log-probabilities and token counts (chosen/rejected, or completion)."""
    from pipeline.compat import trl_preference_tokenize

    tokenized = trl_preference_tokenize(rows, tokenizer, kind)
    answers = ("chosen", "rejected") if kind == PAIRS else ("completion",)
    found = []
    for row in tokenized:
        scored = {}
        for answer in answers:
            ids = list(row[f"{answer}_ids"])
            sample = {"input_ids": list(row["prompt_ids"]) + ids, "labels": [-100] * len(row["prompt_ids"]) + ids}
            losses = reference.token_losses(model, [sample])
            scored[answer] = (-sum(losses), len(losses))
        found.append({**scored, **({"label": row["label"]} if "label" in row else {})})
    return found


def scores(model: Any, tokenizer: Any, rows: Any, kind: str) -> dict:
    scored = log_probabilities(model, tokenizer, rows, kind)
    if kind == PAIRS:
        margins = [row["chosen"][0] - row["rejected"][0] for row in scored]
        return {"pairs": len(margins), "preference_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
                "mean_margin": round(sum(margins) / len(margins), 4)}
    per_token = {True: [], False: []}
    for row in scored:
        logp, count = row["completion"]
        per_token[bool(row["label"])].append(logp / max(count, 1))
    means = {label: sum(v) / len(v) if v else None for label, v in per_token.items()}
    gap = means[True] - means[False] if None not in means.values() else None
    return {"answers": len(scored), "desirable": len(per_token[True]), "undesirable": len(per_token[False]),
            "desirable_gap": round(gap, 4) if gap is not None else None}


@contextlib.contextmanager
def at_start(model: Any, init_from: str | None) -> Iterator[None]:
    """The model as the run started: its base, or init_from's adapter loaded beside the trained one."""
    if not init_from:
        with model.disable_adapter():
            yield
        return
    from pipeline.model.init_from import adapter_folder

    active = model.active_adapter
    model.load_adapter(str(adapter_folder(init_from)), adapter_name="start")
    model.set_adapter("start")
    try:
        yield
    finally:
        model.set_adapter(active)
        model.delete_adapter("start")


def describe(result: dict) -> list[str]:
    """The lines `evaluate` prints for a preference run."""
    before, after = result.get("before"), result["after"]
    if "preference_accuracy" in after:
        was = (f"{before['preference_accuracy']:.2f} before -> " if before else "")
        margin = (f"{before['mean_margin']:.3f} -> " if before else "") + f"{after['mean_margin']:.3f}"
        return [f"preference accuracy {was}{after['preference_accuracy']:.2f} after on {after['pairs']} held-out "
                f"pairs (mean log-probability margin {margin})"]
    gap = (f"{before['desirable_gap']:.3f} -> " if before and before["desirable_gap"] is not None else "")
    shown = f"{after['desirable_gap']:.3f}" if after["desirable_gap"] is not None else "n/a"
    return [f"desirable minus undesirable log-probability per token: {gap}{shown} on {after['answers']} held-out "
            f"answers ({after['desirable']} desirable, {after['undesirable']} undesirable)"]
