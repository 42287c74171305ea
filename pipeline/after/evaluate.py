"""Evaluate a finished run on its own held-out split, base and trained side by side: the loss and perplexity of the
trained tokens, and, where the data has reference answers, greedy answers scored by exact match and by containment.

The held-out split is rebuilt from the run's recorded config exactly as training built it (same seed, same template,
served from the data cache), so the numbers describe data the adapter never trained on.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline.after import generate, reference
from pipeline.after.finished import FinishedRun, check_merged_export
from pipeline.errors import ConfigError


def held_out(run: FinishedRun, tokenizer: Any) -> tuple[Any, Any]:
    """(normalized eval rows, their tokenized and masked form) as the run built them."""
    from pipeline.data import formats, prepare

    config = run.config
    if config.data.streaming:  # the stream's head, as training held it out
        from pipeline.data import streaming

        return streaming.held_out(config, tokenizer)
    if config.data.sources:  # several sources: each one's held-out rows, and the mix's tokenized eval set
        from pipeline.data import mixing

        mixed = mixing.prepare_sources(config, tokenizer, mixing.read_sources(config))
        if mixed.prepared.eval is None:
            raise ConfigError("run", f"{run.path} trained without a held-out split (data.val_size=0)",
                              "train with data.val_size > 0 to evaluate")
        return [row for b in mixed.built.values() if b.eval is not None for row in b.eval], mixed.prepared.eval
    built = formats.build(config.data, tokenizer, config.seed, template=config.model.chat_template,
                          method=config.method.name)
    if built.eval is None:
        raise ConfigError("run", f"{run.path} trained without a held-out split (data.val_size=0, no eval_source)",
                          "train with data.val_size > 0 or data.eval_source to evaluate")
    prepared = prepare.prepare(built, tokenizer, config).eval
    return (prepared if built.kind != "sft" else built.eval), prepared


def question_and_answer(row: dict) -> tuple[list[dict], str, list | None] | None:
    """The conversation up to its last answer, that answer, and the tools the sample offers (None for text data:
    nothing to answer)."""
    tools = json.loads(row["tools"]) if row.get("tools") else None  # stored as a JSON string (data/tools.py)
    if "chosen" in row or "label" in row:  # preference rows: the chosen (or a desirable) answer is the reference
        answer = row["chosen"] if "chosen" in row else row["completion"] if row["label"] else None
        if answer is None:
            return None
        return row["prompt"], answer[0]["content"] if isinstance(answer, list) else answer, None
    if "messages" in row:
        last = max((i for i, turn in enumerate(row["messages"]) if turn["role"] == "assistant"), default=None)
        return None if last is None else (row["messages"][:last], row["messages"][last]["content"], tools)
    if "prompt" in row and "completion" in row:
        completion = row["completion"]
        return row["prompt"], completion[0]["content"] if isinstance(completion, list) else completion, tools
    return None


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def scores(model: Any, tokenizer: Any, rows: Any, settings: Any) -> dict | None:
    """Greedy answers to the held-out prompts: how many equal their reference, how many contain it."""
    pairs = [pair for pair in (question_and_answer(row) for row in rows) if pair is not None][:settings.samples]
    if not pairs:
        return None
    greedy = SimpleNamespace(max_new_tokens=settings.max_new_tokens, temperature=0.0, top_p=1.0)
    answered = [(messages, expected, generate.answer(model, tokenizer, messages, greedy, stream=False, tools=tools))
                for messages, expected, tools in pairs]
    exact = sum(normalized(got) == normalized(expected) for _, expected, got in answered)
    contains = sum(normalized(expected) in normalized(got) for _, expected, got in answered)
    return {"prompts": len(pairs), "exact_match": exact, "contains": contains,
            "examples": [{"prompt": prompt_text(messages), "expected": expected, "answer": got}
                         for messages, expected, got in answered]}


def prompt_text(messages: list[dict] | str) -> str:
    """The last user turn (or the plain prompt): what a reader of eval.json needs to see."""
    if isinstance(messages, str):
        return messages
    return next((turn["content"] for turn in reversed(messages) if turn["role"] == "user"), "")


def losses(model: Any, tokenized: Any) -> dict:
    values = reference.token_losses(model, [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in tokenized])
    loss = reference.mean(values)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": len(values)}


def evaluate(run: FinishedRun, settings: Any) -> dict:
    """eval loss and answer scores for the trained model, and for its base when `settings.before_after`; and
    lm-evaluation-harness tasks on the merged export when `settings.lm_eval_tasks` names some."""
    merged = check_harness(run, settings.lm_eval_tasks)  # before the long part
    model, tokenizer = generate.load(run, SimpleNamespace(source="adapter", base="as_trained"))
    rows, tokenized = held_out(run, tokenizer)
    if run.config.method.name != "sft":
        return evaluate_preferences(run, model, tokenizer, rows, settings)
    result = {"samples": len(tokenized), "after": {**losses(model, tokenized),
                                                  "answers": scores(model, tokenizer, rows, settings)}}
    if settings.before_after:
        with model.disable_adapter():
            result["before"] = {**losses(model, tokenized), "answers": scores(model, tokenizer, rows, settings)}
    if merged is not None:
        del model
        result["lm_eval"] = harness(merged, settings)
    return result


def evaluate_preferences(run: FinishedRun, model: Any, tokenizer: Any, rows: Any, settings: Any) -> dict:
    """A preference run's held-out pairs (or labelled answers) scored at its end, and at its start with
    `settings.before_after`; greedy answers beside them."""
    from pipeline.after import preference_eval
    from pipeline.data.preference import METHOD_DATA

    kind = METHOD_DATA[run.config.method.name]
    result = {"samples": len(rows), "method": run.config.method.name,
              "after": {**preference_eval.scores(model, tokenizer, rows, kind),
                        "answers": scores(model, tokenizer, rows, settings)}}
    if settings.before_after:
        with preference_eval.at_start(model, run.config.init_from):
            result["before"] = {**preference_eval.scores(model, tokenizer, rows, kind),
                                "answers": scores(model, tokenizer, rows, settings)}
    return result


def check_harness(run: FinishedRun, tasks: list[str]) -> Path | None:
    """The merged export lm-evaluation-harness will load, once it is known to be there and installed."""
    if not tasks:
        return None
    import importlib.util

    merged = run.path / "export" / "merged_16bit"
    check_merged_export(merged, run.path, "eval.lm_eval_tasks")  # lm-evaluation-harness runs on it
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("eval.lm_eval_tasks", "lm-evaluation-harness is not installed",
                          'install the extra: pip install -e ".[lm-eval]" (its tasks download their data from the hub)')
    return merged


def harness(merged: Path, settings: Any) -> dict:
    """EleutherAI's lm-evaluation-harness on the merged model, through its own HF model loader: each task's numbers."""
    import lm_eval

    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={merged},dtype=auto",
                                      tasks=list(settings.lm_eval_tasks), limit=settings.lm_eval_limit,
                                      batch_size="auto")
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in results["results"].items()}


def describe(result: dict) -> list[str]:
    """The lines `evaluate` prints: before -> after, and one answer of the trained model."""
    if "error" in result:
        return [f"evaluation failed: {result['error']}"]
    before, after = result.get("before"), result["after"]
    if "method" in result:  # a preference run
        from pipeline.after.preference_eval import describe as describe_preferences

        return describe_preferences(result) + answer_lines(before, after)
    arrow = (lambda key, fmt: f"{fmt.format(before[key])} -> {fmt.format(after[key])}") if before else \
        (lambda key, fmt: fmt.format(after[key]))
    lines = [f"eval loss {arrow('loss', '{:.4f}')} (perplexity {arrow('perplexity', '{:.2f}')}) on "
             f"{result['samples']} held-out samples ({after['tokens']} trained tokens)"]
    lines += answer_lines(before, after)
    for task, metrics in (result.get("lm_eval") or {}).items():
        lines.append(f"lm-eval {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return lines


def answer_lines(before: dict | None, after: dict) -> list[str]:
    """Greedy answers against the references, before -> after, and one trained answer."""
    if not after["answers"]:
        return []
    lines, n = [], after["answers"]["prompts"]
    for key, label in (("exact_match", "exact match"), ("contains", "answer contained")):
        was = f"{before['answers'][key]}/{n} before -> " if before else ""
        lines.append(f"{label} on {n} held-out prompts: {was}{after['answers'][key]}/{n} after")
    example = after["answers"]["examples"][0]
    return [*lines, f"trained answer: {one_line(example['prompt'])!r} -> {one_line(example['answer'])!r}"]


def one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " / ", text.strip())
