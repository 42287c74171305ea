"""The recipe's data stage: the rows read and checked (no tokenizer yet), then the one tokenizer, the datasets
normalized, tokenized and masked by TRL's own code, length-checked and cached (one source, or several mixed), or
with data.streaming prepared chunk by chunk while training reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.schema import TrainConfig
from pipeline.data import formats, preference, prepare, sources
from pipeline.data.cache import cache_folder, load_cached, load_meta
from pipeline.errors import ConfigError
from pipeline.model.loading import load_tokenizer


@dataclass
class Data:
    tokenizer: Any           # the run's one tokenizer: data, trainer, saved adapter
    datasets: formats.Datasets
    prepared: prepare.Prepared
    source_format: str
    conversation: dict | None = None  # a held-out conversation, as the template rendered it for training
    per_source: dict | None = None  # data.sources: each source's format, weight and counts
    stream: Any = None  # data.streaming: the TrainStream the training rows come from (its position)


@dataclass
class Cached:
    """Data prepared before from the same inputs: the cache folder and what the run needs besides the rows."""
    folder: Path
    meta: dict


def read_data(run: TrainConfig) -> Any:
    """The rows as read, their format and required fields checked (no tokenizer needed yet): one source's, or each
    of data.sources'. Data the cache holds from the same inputs (its key needs no reading) is not read at all."""
    sources.quiet_progress_bars()
    if run.data.streaming:  # the head of the stream, read and checked; nothing cached
        from pipeline.data import streaming

        return streaming.read_head(run.data)
    if run.data.sources:
        from pipeline.data import mixing

        return mixing.read_sources(run)
    folder = cache_folder(run, run.data.max_length or run.model.max_seq_length)
    meta = load_meta(folder)
    if meta is not None:
        return Cached(folder, meta)
    return formats.read(run.data, run.method.name)


def setup_data(run: TrainConfig, raw: Any, write_cache: bool = True) -> Data:
    """The tokenizer once, then the datasets tokenized and masked by TRL's own code, length-checked, cached."""
    tokenizer = load_tokenizer(run)
    if run.data.streaming:
        return setup_streamed_data(run, tokenizer, raw)
    if run.data.sources:
        return setup_mixed_data(run, tokenizer, raw, write_cache)
    if isinstance(raw, Cached):
        return from_cache(run, tokenizer, raw)
    built = formats.build(run.data, tokenizer, run.seed, raw, run.model.chat_template, run.method.name)
    prepared = prepare.prepare(built, tokenizer, run, write_cache)
    check_batch_fits(run, len(prepared.train))
    if built.kind != "sft":  # preference rows stay text: TRL's trainer for the method tokenizes them
        datasets = formats.Datasets(prepared.train, prepared.eval, built.format, False, False, kind=built.kind)
        return Data(tokenizer, datasets, prepared, built.format, preference.held_out_conversation(prepared))
    # already tokenized and masked: the trainer keeps the labels and skips its own preparation
    datasets = formats.Datasets(prepared.train, prepared.eval, built.format, False, False, tools=built.tools)
    return Data(tokenizer, datasets, prepared, built.format, formats.held_out_conversation(built))


def from_cache(run: TrainConfig, tokenizer: Any, cached: Cached) -> Data:
    """The stored Arrow files, mapped: the sources are not read or normalized again."""
    prepared = load_cached(cached.folder)
    prepare.warn_about_drops(prepared.stats)
    check_batch_fits(run, len(prepared.train))
    meta = cached.meta
    datasets = formats.Datasets(prepared.train, prepared.eval, meta["format"], False, False,
                                tools=tuple(meta["tools"]), kind=meta["kind"])
    return Data(tokenizer, datasets, prepared, meta["format"], meta["conversation"])


def check_batch_fits(run: TrainConfig, samples: int) -> None:
    t = run.trainer
    if t.per_device_train_batch_size * t.gradient_accumulation_steps > samples:
        raise ConfigError("trainer.gradient_accumulation_steps", f"an effective batch of "
                          f"{t.per_device_train_batch_size} x {t.gradient_accumulation_steps} is larger than the "
                          f"{samples} training samples", "lower trainer.per_device_train_batch_size or "
                          "trainer.gradient_accumulation_steps, or give more data")


def setup_mixed_data(run: TrainConfig, tokenizer: Any, raws: dict, write_cache: bool) -> Data:
    """data.sources: each source prepared as if alone, then mixed (pipeline.data.mixing)."""
    from pipeline.data import mixing

    mixed = mixing.prepare_sources(run, tokenizer, raws, write_cache)
    check_batch_fits(run, len(mixed.prepared.train))
    used = tuple(sorted({part for built in mixed.built.values() for part in built.tools}))
    datasets = formats.Datasets(mixed.prepared.train, mixed.prepared.eval, mixed.format, False, False, tools=used)
    first = next(iter(mixed.built.values()))
    return Data(tokenizer, datasets, mixed.prepared, mixed.format, formats.held_out_conversation(first),
                mixed.per_source)


def setup_streamed_data(run: TrainConfig, tokenizer: Any, head: Any) -> Data:
    """data.streaming: the first chunk prepared now (the sample the statistics describe, and the mistakes found
    before any model loads), the held-out rows prepared whole, the training rows a stream prepared as it is read."""
    from pipeline.data import streaming

    sample, sample_stats, built = streaming.prepare_rows(head.sample, head.format, run, tokenizer, "train")
    stats, evaluation = {"train": sample_stats}, None
    held_out = head.held_out
    if held_out is None and run.data.eval_source not in (None, "", []):
        held_out = sources.load_source(run.data, run.data.eval_source, key="data.eval_source")
    if held_out is not None:
        evaluation, stats["eval"], _ = streaming.prepare_rows(held_out, head.format, run, tokenizer, "eval")
    prepare.warn_about_drops(stats)
    stream = streaming.TrainStream(run, tokenizer, head, sample=sample)
    prepared = prepare.Prepared(stream.dataset(), evaluation, stats, None, False)
    datasets = formats.Datasets(prepared.train, evaluation, head.format, False, False, tools=built.tools)
    return Data(tokenizer, datasets, prepared, head.format, formats.held_out_conversation(built), stream=stream)
