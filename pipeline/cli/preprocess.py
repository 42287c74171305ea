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


def preprocess(run: Any, run_dir: Path, colour: bool, hydra_files: tuple = ()) -> dict:
    from pipeline.data import formats, prepare, sources
    from pipeline.model.loading import check_local_model, load_tokenizer
    from pipeline.outputs.logs import route_library_logs
    from pipeline.outputs.rundir import write_atomically, write_hydra_files

    check_local_model(run.model.name)  # a path that is not there: said before any import
    sources.quiet_progress_bars()
    raw = formats.read(run.data)  # data mistakes first: they need no tokenizer
    route_library_logs()
    tokenizer = load_tokenizer(run)
    prepared = prepare.prepare(formats.build(run.data, tokenizer, run.seed, raw), tokenizer, run)
    print(f"data: {run.data.source} ({raw.format}, loss on {formats.loss_label(raw.format, run.data.loss_on)})"
          + (f", served from cache {prepared.cache_dir}" if prepared.from_cache else ""))
    for name, stats in prepared.stats.items():
        print(f"{name}: {prepare.describe(stats)}")
    legend = f"{GREEN}trained{RESET}" if colour else "[[trained]]"
    print(f"\nfirst {run.data.preview_samples} training samples ({legend} tokens carry the loss):")
    for index in range(min(run.data.preview_samples, len(prepared.train))):
        row = prepared.train[index]
        print(f"--- sample {index} ({len(row['input_ids'])} tokens)")
        print(render(row["input_ids"], row["labels"], tokenizer, colour))
    report = {"from_cache": prepared.from_cache, "cache_dir": str(prepared.cache_dir), **prepared.stats_dict()}
    write_atomically(run_dir / "data_stats.json", json.dumps(report, indent=2) + "\n")
    write_hydra_files(run_dir, hydra_files)
    return report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run_command(cfg, lambda run, context: preprocess(run, context.run_dir, sys.stdout.isatty(), context.hydra_files))


cli = entry(main)


if __name__ == "__main__":
    cli()
