"""`python -m pipeline.preprocess`: build the datasets only and show what training will see.

Prints length statistics and `data.preview_samples` rendered samples with the trained tokens marked (green on a
terminal, [[brackets]] otherwise). Uses the same preparation as `train` (TRL's masks, our length policy) and the
same cache, so a second run with the same config is served from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli.common import CONF_DIR, entry, run_command

GREEN, RESET = "\033[30;42m", "\033[0m"


def render(input_ids: list[int], labels: list[int], tokenizer: Any, colour: bool) -> str:
    """The decoded sample, with spans whose tokens carry the loss marked."""
    from pipeline.data.prepare import IGNORE

    pieces, span, trained = [], [], None
    for token, label in [*zip(input_ids, labels, strict=True), (None, None)]:
        is_trained = label is not None and label != IGNORE
        if span and (token is None or is_trained != trained):
            text = tokenizer.decode(span)
            pieces.append((f"{GREEN}{text}{RESET}" if colour else f"[[{text}]]") if trained else text)
            span = []
        if token is not None:
            span.append(token)
            trained = is_trained
    return "".join(pieces)


def trained_spans(labels: list[int]) -> int:
    from pipeline.data.prepare import IGNORE

    return sum(1 for i, label in enumerate(labels) if label != IGNORE and (i == 0 or labels[i - 1] == IGNORE))


def preview_indices(dataset: Any, count: int) -> list[int]:
    """The sample with the most trained spans (a multi-turn or tool-calling one shows the most of the mask), then
    the first ones."""
    count = min(count, len(dataset))
    if count == 0:
        return []
    spans = [trained_spans(labels) for labels in dataset["labels"]]
    richest = spans.index(max(spans))
    return [richest, *[i for i in range(len(dataset)) if i != richest][:count - 1]]


def preview(train: Any, tokenizer: Any, count: int, colour: bool) -> None:
    legend = f"{GREEN}trained{RESET}" if colour else "[[trained]]"
    print(f"\n{count} training samples, the one with the most trained spans first ({legend} tokens carry the loss):")
    for index in preview_indices(train, count):
        row = train[index]
        print(f"--- sample {index} ({len(row['input_ids'])} tokens)")
        print(render(row["input_ids"], row["labels"], tokenizer, colour))


def preview_preferences(train: Any, tokenizer: Any, count: int, colour: bool) -> None:
    """The first rows as TRL's trainer renders them: the prompt, then each answer (marked: what is scored)."""
    from trl.data_utils import maybe_apply_chat_template

    mark = (lambda text: f"{GREEN}{text}{RESET}") if colour else (lambda text: f"[[{text}]]")
    print(f"\n{count} training samples as the trainer renders them (the {mark('answers')} are scored):")
    for index in range(min(count, len(train))):
        row = maybe_apply_chat_template(train[index], tokenizer)
        print(f"--- sample {index}")
        print(row["prompt"], end="")
        for key in ("chosen", "rejected", "completion"):
            if key in row:
                label = f" ({'desirable' if train[index]['label'] else 'undesirable'})" if key == "completion" \
                    else ""
                print(f"\n{key}{label}: {mark(row[key])}")


def preprocess(run: Any, run_dir: Path, colour: bool, hydra_files: tuple = ()) -> dict:
    from pipeline.data import formats, prepare, sources
    from pipeline.model.loading import check_local_model, load_tokenizer
    from pipeline.outputs.logs import route_library_logs

    check_local_model(run.model.name)  # a path that is not there: said before any import
    sources.quiet_progress_bars()
    if run.data.sources:
        return preprocess_sources(run, run_dir, colour, hydra_files)
    if run.data.streaming:
        return preprocess_stream(run, run_dir, colour, hydra_files)
    raw = formats.read(run.data, run.method.name)  # data mistakes first: they need no tokenizer
    route_library_logs()
    tokenizer = load_tokenizer(run)
    built = formats.build(run.data, tokenizer, run.seed, raw, run.model.chat_template, run.method.name)
    prepared = prepare.prepare(built, tokenizer, run)
    print(f"data: {run.data.source} ({formats.describe(raw.format, run.data.loss_on, built.tools)})"
          + (f", served from cache {prepared.cache_dir}" if prepared.from_cache else ""))
    return report(prepared, built.kind, tokenizer, run, run_dir, colour, hydra_files)


def preprocess_stream(run: Any, run_dir: Path, colour: bool, hydra_files: tuple) -> dict:
    """data.streaming: the stream's held-out head and its first chunk, the sample training's statistics describe."""
    from pipeline.data import formats, prepare, streaming
    from pipeline.model.loading import load_tokenizer
    from pipeline.outputs.logs import route_library_logs

    head = streaming.read_head(run.data)
    route_library_logs()
    tokenizer = load_tokenizer(run)
    train, stats, built = streaming.prepare_rows(head.sample, head.format, run, tokenizer, "train")
    figures = {"train": stats}
    if head.held_out is not None:
        _, figures["eval"], _ = streaming.prepare_rows(head.held_out, head.format, run, tokenizer, "eval")
    print(f"data: {run.data.source} ({formats.describe(head.format, run.data.loss_on, built.tools)}), streamed: "
          f"statistics of its first chunk of {run.data.streaming_chunk} rows (the sample), nothing cached")
    prepared = prepare.Prepared(train, None, figures, None, False)
    return report(prepared, "sft", tokenizer, run, run_dir, colour, hydra_files, {"streaming_sample": len(head.sample)})


def preprocess_sources(run: Any, run_dir: Path, colour: bool, hydra_files: tuple) -> dict:
    """data.sources: each source prepared on its own, then the mix (pipeline.data.mixing)."""
    from pipeline.data import mixing
    from pipeline.model.loading import load_tokenizer
    from pipeline.outputs.logs import route_library_logs

    raws = mixing.read_sources(run)
    route_library_logs()
    tokenizer = load_tokenizer(run)
    mixed = mixing.prepare_sources(run, tokenizer, raws)
    print(f"data: {mixed.format}")
    for name, facts in mixed.per_source.items():
        print(f"source {name}: {facts['in_mix']} of {facts['train_samples']} train samples in the mix "
              f"({facts['format']}, weight {facts['weight']:g}), {facts['trained_tokens']} trained tokens, "
              f"{facts['eval_samples']} held out")
    return report(mixed.prepared, "sft", tokenizer, run, run_dir, colour, hydra_files,
                  {"data_sources": mixed.per_source})


def report(prepared: Any, kind: str, tokenizer: Any, run: Any, run_dir: Path, colour: bool, hydra_files: tuple,
           extra: dict | None = None) -> dict:
    """Statistics, the preview, and data_stats.json."""
    from pipeline.data import prepare
    from pipeline.outputs.rundir import write_atomically, write_hydra_files

    for name, stats in prepared.stats.items():
        print(f"{name}: {prepare.describe(stats)}")
    if kind == "sft":
        preview(prepared.train, tokenizer, run.data.preview_samples, colour)
    else:
        preview_preferences(prepared.train, tokenizer, run.data.preview_samples, colour)
    figures = {"from_cache": prepared.from_cache, "cache_dir": str(prepared.cache_dir), **prepared.stats_dict(),
               **(extra or {})}
    write_atomically(run_dir / "data_stats.json", json.dumps(figures, indent=2) + "\n")
    write_hydra_files(run_dir, hydra_files)
    return figures


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run_command(cfg, lambda run, context: preprocess(run, context.run_dir, sys.stdout.isatty(), context.hydra_files))


cli = entry(main)


if __name__ == "__main__":
    cli()
