"""Several sources (`data.sources`), each read, normalized, tokenized, length-checked, split and cached in its own
format as if it were the run's only one, then mixed: `data.mix=concat` (one after another, shuffled by the trainer) or
`interleave` (datasets' `interleave_datasets`, the weights as sampling probabilities, seeded, with its stopping
strategies). The samples are mixed tokenized, so sources of different formats mix; the held-out split is each
source's own, concatenated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.config.schema import SourceConfig
from pipeline.errors import ConfigError

SOURCE_KEYS = {"data.source": "source", "data.format": "format", "data.subset": "subset", "data.split": "split",
               "data.max_samples": "max_samples"}  # a mistake in one source is named by its own key
ORIGIN = "source_index"  # a column each source's rows carry while they are mixed, to count them


def named_sources(data: Any) -> dict[str, SourceConfig]:
    """data.sources as SourceConfig objects (validated at the config boundary)."""
    return {str(name): SourceConfig(**dict(entry)) for name, entry in (data.sources or {}).items()}


def source_data(data: Any, source: SourceConfig) -> Any:
    """The run's data settings with one source in place of data.source."""
    return dataclasses.replace(data, source=source.source, subset=source.subset, split=source.split,
                               format=source.format, columns=source.columns, max_samples=source.max_samples,
                               sources=None)


@contextlib.contextmanager
def named(name: str) -> Iterator[None]:
    """A source's mistakes name `data.sources.<name>.<key>`."""
    try:
        yield
    except ConfigError as error:
        key = error.key
        if key in SOURCE_KEYS:
            key = f"data.sources.{name}.{SOURCE_KEYS[key]}"
        elif key.startswith("data.columns"):
            key = f"data.sources.{name}.{key.removeprefix('data.')}"
        elif not key.startswith("data.sources"):
            raise
        raise ConfigError(key, error.problem, error.fix) from error


def read_sources(run: Any) -> dict[str, Any]:
    """Each source read and checked (formats.read): its mistakes cost no tokenizer."""
    from pipeline.data import formats

    raws = {}
    for name, source in named_sources(run.data).items():
        with named(name):
            raws[name] = formats.read(source_data(run.data, source), run.method.name)
    return raws


@dataclass
class Mixed:
    prepared: Any              # prepare.Prepared of the mix (tokenized train and eval, stats of the mix)
    built: dict[str, Any]      # name -> formats.Datasets (normalized rows)
    per_source: dict[str, dict]  # name -> format, weight, samples, trained tokens, samples in the mixed train set
    format: str                # how the header names the data


def prepare_sources(run: Any, tokenizer: Any, raws: dict[str, Any], write_cache: bool = True) -> Mixed:
    """Each source built and prepared on its own (its own cache entry), then mixed."""
    from datasets import concatenate_datasets

    from pipeline.data import formats, prepare

    sources, built, prepared = named_sources(run.data), {}, {}
    for name, source in sources.items():
        data = source_data(run.data, source)
        with named(name):
            built[name] = formats.build(data, tokenizer, run.seed, raws[name], run.model.chat_template,
                                        run.method.name)
            prepared[name] = prepare.prepare(built[name], tokenizer, dataclasses.replace(run, data=data),
                                             write_cache)
    trains = [p.train.add_column(ORIGIN, [i] * len(p.train)) for i, p in enumerate(prepared.values())]
    train = mix(trains, [s.weight for s in sources.values()], run.data.mix, run.data.stopping_strategy, run.seed)
    drawn = {name: 0 for name in sources}
    names = list(sources)
    for origin in train[ORIGIN]:
        drawn[names[origin]] += 1
    train = train.remove_columns(ORIGIN)
    evals = [p.eval for p in prepared.values() if p.eval is not None]
    evaluation = concatenate_datasets(evals) if evals else None
    stats = {"train": mixed_stats(train, [p.stats["train"] for p in prepared.values()])}
    if evaluation is not None:
        stats["eval"] = mixed_stats(evaluation, [p.stats["eval"] for p in prepared.values() if "eval" in p.stats])
    per_source = {name: {"format": built[name].format, "weight": sources[name].weight,
                         "train_samples": len(prepared[name].train),
                         "eval_samples": len(prepared[name].eval) if prepared[name].eval is not None else 0,
                         "trained_tokens": prepared[name].stats["train"].trained_tokens, "in_mix": drawn[name]}
                  for name in sources}
    described = ", ".join(f"{name} ({facts['format']}, {facts['in_mix']})" for name, facts in per_source.items())
    mixed = prepare.Prepared(train, evaluation, stats, None, all(p.from_cache for p in prepared.values()))
    return Mixed(mixed, built, per_source, f"{len(sources)} sources, {run.data.mix}: {described}")


def mix(parts: list[Any], weights: list[float], how: str, stopping: str, seed: int) -> Any:
    from datasets import concatenate_datasets, interleave_datasets

    if how == "concat" or len(parts) == 1:
        return concatenate_datasets(parts)
    total = sum(weights)
    return interleave_datasets(parts, probabilities=[w / total for w in weights], seed=seed,
                               stopping_strategy=stopping)


def mixed_stats(dataset: Any, parts: list[Any]) -> Any:
    """The mix's length statistics: its own samples and trained tokens, and what each source's policy dropped."""
    from pipeline.data.prepare import LengthStats, token_counts

    counts = token_counts(dataset)
    lengths, trained = sorted(counts[0]), sum(counts[1])
    summed = {key: sum(getattr(p, key) for p in parts) for key in (
        "overlength", "dropped_overlength", "truncated", "dropped_untrained", "dropped_without_answer", "windows")}
    return LengthStats(samples=len(dataset), min=lengths[0], median=statistics.median(lengths),
                       p95=lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))], max=lengths[-1],
                       max_length=max(p.max_length for p in parts), trained_tokens=trained, **summed)
