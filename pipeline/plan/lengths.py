"""Which sequence length `plan` prices activations at: the data's real token lengths when it can read them.

A batch is padded to its longest sample, so the longest training sample (after the length policy) sets the peak; a
local dataset whose tokenizer is at hand is prepared exactly as `preprocess` does it (and cached the same way).
Otherwise, and with packing (every sequence filled to the limit), the limit is priced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.model.hub import files_at_hand

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


@dataclass
class PricedLength:
    tokens: int    # per sample: what activations and logits are priced at
    source: str    # "data" (the longest training sample) or "limit" (data.max_length / model.max_seq_length)
    reason: str    # one line: where the number comes from


def is_local(source: Any) -> bool:
    from pipeline.data.sources import local_files

    sources = source if isinstance(source, (list, tuple)) else [source]
    try:
        return all(local_files(str(s)) for s in sources)
    except ConfigError:  # a local path that is not there: train and preprocess say so; plan prices the limit
        return False


def priced_length(run: Any) -> PricedLength:
    from pipeline.plan.estimate import sequence_length

    limit = sequence_length(run)
    if run.data.packing:
        return PricedLength(limit, "limit", f"{limit} tokens per sample: packing fills every sequence to the limit")
    given = [s["source"] for s in run.data.sources.values()] if run.data.sources else run.data.source
    if not is_local(given):
        return PricedLength(limit, "limit", f"{limit} tokens per sample, the limit: {given} is not a "
                            "local dataset, so its lengths are not known before training")
    unloadable = PricedLength(limit, "limit", f"{limit} tokens per sample, the limit: the tokenizer of "
                              f"{run.model.name} cannot be loaded here, so the data's lengths are not known")
    if not files_at_hand(run.model.name, run.model.revision, TOKENIZER_FILES):
        return unloadable  # said before transformers is imported, so a preset's plan needs none
    try:
        stats = _train_stats(run)
    except ConfigError as error:
        if error.key != "model.name":
            raise  # the data's own mistakes are the user's to fix, as in preprocess
        return unloadable
    longest = min(stats.max, limit)
    return PricedLength(longest, "data", f"{longest} tokens per sample, the longest training sample of "
                        f"{given} (p95 {stats.p95}, limit {limit}; {stats.samples} samples)")


def _train_stats(run: Any) -> Any:
    from pipeline.data import formats, prepare, sources
    from pipeline.model.loading import load_tokenizer

    sources.quiet_progress_bars()
    if run.data.streaming:  # the first chunk: the sample a streamed run's statistics describe
        from pipeline.data import streaming

        head = streaming.read_head(run.data)
        return streaming.prepare_rows(head.sample, head.format, run, load_tokenizer(run), "train")[1]
    if run.data.sources:
        from pipeline.data import mixing

        return mixing.prepare_sources(run, load_tokenizer(run), mixing.read_sources(run)).prepared.stats["train"]
    raw = formats.read(run.data, run.method.name)
    tokenizer = load_tokenizer(run)
    built = formats.build(run.data, tokenizer, run.seed, raw, run.model.chat_template, run.method.name)
    return prepare.prepare(built, tokenizer, run).stats["train"]
