"""Tokenize and mask with TRL's own preparation, then apply the length policy, count, and cache.

TRL's own dataset preparation (`pipeline.compat.trl_tokenize_and_mask`) turns text / messages / prompt-completion
rows into `input_ids` + `labels` (chat template, EOS, assistant or completion masks). We run it with the tokenizer
alone, before any model weight loads, so a template that masks every token or an over-long sample fails fast,
`preprocess` shows exactly what training will see, and SFTTrainer later receives the tokenized rows and skips its
own preparation. It is TRL's own code on every machine, also where Unsloth's GPU path replaced `trl.SFTTrainer`.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.data.cache import lookup, store
from pipeline.data.formats import Datasets, held_out_conversation
from pipeline.data.turns import mask_assistant_turns
from pipeline.errors import ConfigError, first_line

IGNORE = -100  # label of a token that carries no loss
log = logging.getLogger(__name__)


@dataclass
class LengthStats:
    samples: int
    min: int
    median: float
    p95: int
    max: int
    max_length: int
    overlength: int           # samples longer than max_length before the policy
    dropped_overlength: int
    truncated: int
    dropped_untrained: int    # samples left with no trained token (dropped)
    trained_tokens: int
    dropped_without_answer: int = 0  # conversations with no assistant turn, dropped before tokenizing
    windows: int = 0          # overlength=chunk: the windows the long samples became
    dropped_long_prompt: int = 0  # preference data: prompts longer than method.max_prompt_length (dropped)


@dataclass
class Prepared:
    train: Any
    eval: Any
    stats: dict[str, LengthStats]
    cache_dir: Path | None
    from_cache: bool

    def stats_dict(self) -> dict:
        return {name: asdict(s) for name, s in self.stats.items()}


PARALLEL_FROM = 10_000  # samples: below this, forking tokenizer processes costs more than it saves


def processes(num_proc: int | None, samples: int) -> int | None:
    """data.num_proc, or for null one process per core from PARALLEL_FROM samples on (None: this process)."""
    import os

    if num_proc is None:
        num_proc = (os.cpu_count() or 1) if samples >= PARALLEL_FROM else 1
    return num_proc if num_proc > 1 else None


def tokenize_with_trl(dataset: Any, tokenizer: Any, datasets: Datasets, name: str, num_proc: int | None = None) -> Any:
    """input_ids + labels exactly as SFTTrainer would build them (no truncation: our policy does that)."""
    from jinja2 import TemplateError

    from pipeline.compat import trl_tokenize_and_mask

    try:
        return trl_tokenize_and_mask(dataset, tokenizer, name, assistant_only_loss=datasets.assistant_only_loss,
                                     completion_only_loss=datasets.completion_only_loss,
                                     num_proc=processes(num_proc, len(dataset)))
    except TemplateError as error:
        raise ConfigError("model.chat_template", f"the chat template cannot render a {name} sample: "
                          f"{first_line(error)}", "use a template that fits the data, or fix the samples it refuses"
                          ) from error
    except RuntimeError as error:
        if "no assistant tokens" not in str(error):
            raise
        raise ConfigError("model.chat_template", f"the chat template marks no assistant tokens in a {name} sample",
                          "use a template whose {% generation %} markers cover assistant turns, "
                          "or data.loss_on=all") from error
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError("data.source", f"cannot tokenize a {name} sample: {first_line(error)}",
                          "check the sample's fields against data.format") from error


def apply_turn_flags(dataset: Any, name: str) -> Any:
    """Per-turn loss flags (`formats.TRAINED_TURNS`): TRL's mask trains every assistant turn, one run of trained
    labels each, in order; the runs of turns flagged off go back to IGNORE."""
    from pipeline.data.formats import TRAINED_TURNS

    if TRAINED_TURNS not in dataset.column_names:
        return dataset

    def mask(row: dict, index: int) -> dict:
        labels, runs, start = list(row["labels"]), [], None
        for i, label in enumerate([*labels, IGNORE]):
            if label != IGNORE and start is None:
                start = i
            elif label == IGNORE and start is not None:
                runs.append((start, i))
                start = None
        if len(runs) != len(row[TRAINED_TURNS]):
            raise ConfigError("data.source", f"{name} sample {index}: the chat template trains {len(runs)} spans for "
                              f"{len(row[TRAINED_TURNS])} assistant turns, so per-turn flags cannot be matched to them",
                              "use a template that marks each assistant turn, or remove the train / loss_weight flags")
        for (begin, end), trained in zip(runs, row[TRAINED_TURNS], strict=True):
            if not trained:
                labels[begin:end] = [IGNORE] * (end - begin)
        return {"labels": labels}

    return dataset.map(mask, with_indices=True, remove_columns=[TRAINED_TURNS], desc=f"Per-turn flags ({name})")


def apply_length_policy(dataset: Any, max_length: int, policy: str, name: str, loss_on: str,
                        num_proc: int | None = None) -> tuple[Any, LengthStats]:
    lengths, trained_before = token_counts(dataset, num_proc)
    over = [i for i, n in enumerate(lengths) if n > max_length]
    if over and policy == "raise":
        raise ConfigError("data.overlength", f"{len(over)} {name} samples are longer than {max_length} tokens "
                          f"(first: sample {over[0]}, {lengths[over[0]]} tokens)",
                          "raise data.max_length, or set data.overlength=drop or truncate")
    windows = 0
    if over and policy == "chunk":  # every token stays: each long sample becomes max_length windows
        windows = sum(-(-lengths[i] // max_length) for i in over)
        dataset = dataset.map(_windows, batched=True, remove_columns=dataset.column_names,
                              fn_kwargs={"max_length": max_length}, desc=f"Chunking {name}")
    elif over and policy == "drop":
        dataset = dataset.select([i for i, n in enumerate(lengths) if n <= max_length])
        if len(dataset) == 0:
            raise ConfigError("data.overlength", f"every {name} sample is longer than {max_length} tokens "
                              f"(shortest: {min(lengths)})", "raise data.max_length, or use data.overlength=truncate")
    elif over:
        dataset = dataset.map(lambda row: {"input_ids": row["input_ids"][:max_length],
                                           "labels": row["labels"][:max_length]}, desc=f"Truncating {name}")
    before = len(dataset)
    trained = token_counts(dataset, num_proc)[1] if over else trained_before  # the policy changed rows: again
    kept = [i for i, count in enumerate(trained) if count]
    if len(kept) < before:  # samples with no trained token left
        dataset = dataset.select(kept)
    if len(dataset) == 0:
        cause = ("the chat template may not mark the responses (or every response is cut off by max_length); "
                 "check model.chat_template, or train on everything with data.loss_on=all"
                 if loss_on == "responses" else "every sample is empty after tokenization")
        raise ConfigError("data.loss_on", f"no {name} sample has a trained token left", cause)
    # the statistics below describe the samples as tokenized, before the length policy
    ordered = sorted(lengths)
    stats = LengthStats(
        samples=len(dataset), min=ordered[0], median=statistics.median(ordered),
        p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], max=ordered[-1], max_length=max_length,
        overlength=len(over), dropped_overlength=len(over) if policy == "drop" else 0,
        truncated=len(over) if policy == "truncate" else 0, dropped_untrained=before - len(dataset),
        trained_tokens=sum(trained), windows=windows)
    return dataset.select_columns(["input_ids", "labels"]), stats


def token_counts(dataset: Any, num_proc: int | None = None) -> tuple[list[int], list[int]]:
    """(tokens, trained tokens) of every sample, counted on the Arrow columns a batch at a time, in the tokenizing
    processes for large data (data.num_proc): no row is made a Python object, and this process reads two numbers a
    sample instead of every token."""
    counted = dataset.select_columns(["input_ids", "labels"]).with_format("arrow").map(
        _count_batch, batched=True, remove_columns=["input_ids", "labels"],
        num_proc=processes(num_proc, len(dataset)), desc="Counting tokens")
    table = counted.with_format("arrow")[:]
    return table.column("tokens").to_pylist(), table.column("trained").to_pylist()


def _count_batch(batch: Any) -> Any:
    """A batch's tokens and trained tokens (labels other than IGNORE) per sample, as an Arrow table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = batch.column("labels").combine_chunks()
    offsets = labels.offsets.to_numpy()
    running = np.concatenate([[0], np.cumsum(pc.list_flatten(labels).to_numpy() != IGNORE, dtype=np.int64)])
    trained = running[offsets[1:] - offsets[0]] - running[offsets[:-1] - offsets[0]]
    return pa.table({"tokens": pc.list_value_length(batch.column("input_ids")), "trained": pa.array(trained)})


def _windows(batch: dict, max_length: int) -> dict:
    """Consecutive max_length windows of each sample (a short one stays whole)."""
    ids, labels = [], []
    for sample_ids, sample_labels in zip(batch["input_ids"], batch["labels"], strict=True):
        for start in range(0, len(sample_ids), max_length):
            ids.append(sample_ids[start:start + max_length])
            labels.append(sample_labels[start:start + max_length])
    return {"input_ids": ids, "labels": labels}


def length_policy(overlength: str, fmt: str) -> str:
    """`auto`: text documents are chunked (continued pre-training keeps every token), samples of other formats
    dropped. `chunk` is refused for those: a window of a conversation would lose its prompt or its answer."""
    if overlength == "auto":
        return "chunk" if fmt == "text" else "drop"
    if overlength == "chunk" and fmt != "text":
        raise ConfigError("data.overlength", f"chunk splits text documents into windows, and this data is {fmt} "
                          "(a window would lose its prompt or its answer)", "use drop or truncate, or data.format=text")
    return overlength


def prepare(datasets: Datasets, tokenizer: Any, run: Any, write_cache: bool = True) -> Prepared:
    """Tokenized, masked, length-checked train/eval sets, served from the cache when nothing changed. `write_cache`
    is False in the processes of a launch other than rank 0: they read the cache, never write it at the same time."""
    max_length = run.data.max_length or run.model.max_seq_length
    folder, cached = lookup(run, max_length)
    if cached is not None:
        warn_about_drops(cached.stats)
        return cached
    if datasets.kind != "sft":  # preference rows: measured with TRL's tokenization, kept as text
        from pipeline.data import prepare_preference

        return prepare_preference.prepare(datasets, tokenizer, run, max_length, folder, write_cache)
    parts, stats = {}, {}
    for name, dataset in (("train", datasets.train), ("eval", datasets.eval)):
        if dataset is not None:
            parts[name], stats[name] = prepare_split(dataset, datasets, tokenizer, run, name, max_length)
    stats["train"].dropped_without_answer = datasets.dropped_without_answer
    warn_about_drops(stats)
    prepared = Prepared(parts["train"], parts.get("eval"), stats, folder, False)
    store(run, max_length, folder, prepared, {"format": datasets.format, "tools": list(datasets.tools),
                                              "kind": datasets.kind, "conversation": held_out_conversation(datasets)},
          write_cache)
    return prepared


def prepare_split(dataset: Any, datasets: Datasets, tokenizer: Any, run: Any, name: str,
                  max_length: int) -> tuple[Any, LengthStats]:
    """One split of normalized rows: tokenized and masked by TRL, per-turn flags applied, the length policy."""
    tokenized = tokenize_with_trl(dataset, tokenizer, datasets, name, run.data.num_proc)
    if datasets.template_turns:  # a template without {% generation %} markers: its turns read off it
        tokenized = mask_assistant_turns(tokenized, tokenizer, name, datasets.template_turns,
                                         processes(run.data.num_proc, len(tokenized)))
    tokenized = apply_turn_flags(tokenized, name)
    policy = length_policy(run.data.overlength, datasets.format)
    return apply_length_policy(tokenized, max_length, policy, name, run.data.loss_on, run.data.num_proc)


DROP_WARNING_SHARE = 0.10  # more of a split than this dropped is said in a warning line


def warn_about_drops(stats: dict[str, LengthStats]) -> None:
    """A split that lost more than a tenth of its samples to the length policy or to having no trained token left
    says so in one line, with the fix."""
    for name, split in stats.items():
        dropped = split.dropped_overlength + split.dropped_untrained + split.dropped_long_prompt
        total = split.samples + dropped
        if total and dropped / total > DROP_WARNING_SHARE:
            log.warning("data: %d of %d %s samples (%.0f%%) dropped: %d longer than %d tokens, %d with no trained "
                        "token left; keep them with a larger data.max_length or data.overlength=truncate", dropped,
                        total, name, 100 * dropped / total, split.dropped_overlength, split.max_length,
                        split.dropped_untrained)


def describe(stats: LengthStats) -> str:
    return (f"{stats.samples} samples, tokens min {stats.min} / median {stats.median:g} / p95 {stats.p95} / "
            f"max {stats.max} before the limit of {stats.max_length}; over it {stats.overlength} "
            f"(dropped {stats.dropped_overlength}, truncated {stats.truncated}"
            + (f", chunked into {stats.windows} windows" if stats.windows else "") + "); "
            f"dropped with no trained token {stats.dropped_untrained}"
            + (f", without an answer {stats.dropped_without_answer}" if stats.dropped_without_answer else "")
            + (f", prompt over method.max_prompt_length {stats.dropped_long_prompt}" if stats.dropped_long_prompt
               else "")
            + f"; trained tokens {stats.trained_tokens}")
