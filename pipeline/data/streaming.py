"""data.streaming: the source read as datasets' `IterableDataset`, prepared chunk by chunk while training runs.

Rows are read `data.streaming_chunk` at a time; each chunk goes through the same reading checks, normalization,
TRL tokenization and masking and length policy as a whole dataset does (and, with packing, TRL's own
`pack_dataset`), so memory holds one chunk, never the corpus. The first chunk is the sample whose statistics are
reported; `data.val_size` (a count) is taken from the stream's head and never trained. The stream repeats when it
ends (trainer.max_steps says how long training goes on), and is read in its order: no shuffle buffer, whose
contents a resumed run could not get back.

Where training stands is a `Position`: datasets' own `state_dict()` of the source stream at the start of the chunk
being trained, and how many of that chunk's prepared rows were handed out. A checkpoint stores it; a resumed run
loads it into the source stream (`load_state_dict`) and prepares that one chunk again, so it reads each sample once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from pipeline.data import formats, prepare, sources
from pipeline.errors import ConfigError, first_line

log = logging.getLogger(__name__)
PACKING_STRATEGY = "bfd"  # TRL's default (SFTConfig.packing_strategy)


@dataclass
class Position:
    """Where the training stream stands (saved with each checkpoint)."""
    source_state: dict | None = None  # datasets' state_dict of the source stream where the current chunk starts
    row: int = 0                      # prepared rows of that chunk handed out
    chunks: int = 0                   # chunks prepared since the run began
    rows_read: int = 0                # source rows read into them (a repeated pass counts again)
    samples: int = 0                  # prepared samples (packed sequences with packing) handed out

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Head:
    """The stream opened: its held-out rows and first chunk read and checked, the format known."""
    stream: Any          # the source as an IterableDataset (every row, the held-out ones included)
    held_out: Any        # a Dataset of the first data.val_size rows, or None
    sample: Any          # a Dataset of the next data.streaming_chunk rows
    format: str


def open_source(data: Any) -> Any:
    """data.source as an IterableDataset: local files (JSON/JSONL, CSV, Parquet, text) or a hub dataset id."""
    import os

    from datasets import load_dataset

    source = str(data.source)
    files = sources.local_files(source)
    try:
        if files is None:
            stream = load_dataset(source, data.subset, split=data.split, streaming=True)
        else:
            if not files:
                raise ConfigError("data.source", f"no data files match {source}",
                                  f"use {', '.join(sorted(sources.LOCAL_BUILDERS))} files")
            if all(sources.is_blank(path) for path in files):
                raise ConfigError("data.source", f"the dataset is empty ({', '.join(files)} has no rows)",
                                  "point data.source at a file with samples")
            builder = sources.LOCAL_BUILDERS.get(os.path.splitext(files[0])[1])
            if builder is None:
                raise ConfigError("data.source", f"cannot read {files[0]}",
                                  f"use one of {', '.join(sorted(sources.LOCAL_BUILDERS))}")
            options = {"sample_by": data.sample_by} if builder == "text" else {}
            stream = load_dataset(builder, data_files=files, split="train", streaming=True, **options)
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - network, auth, a missing repo or split: the user's to fix
        raise ConfigError("data.source", f"cannot stream '{source}': {first_line(error)}",
                          "check the path or hub id, data.subset and data.split") from error
    columns = {new: old for new, old in (data.columns or {}).items() if old != new}
    return stream.rename_columns({old: new for new, old in columns.items()}) if columns else stream


def rows_of(stream: Any, count: int, skip: int = 0) -> Any:
    """`count` rows of the stream after `skip`, as a Dataset (read errors named as for a whole file)."""
    from datasets import Dataset

    try:
        rows = list(islice(iter(stream), skip, skip + count))
    except Exception as error:  # noqa: BLE001 - a line datasets cannot parse
        raise ConfigError("data.source", f"cannot read a row: {first_line(error)}", "fix the file") from error
    return Dataset.from_list(rows)


def read_head(data: Any) -> Head:
    """Open the stream and read its head: the held-out rows, then the first chunk, both checked like a dataset."""
    sources.quiet_progress_bars()
    stream = open_source(data)
    held = int(data.val_size)
    head = rows_of(stream, held + data.streaming_chunk)
    if len(head) <= held:
        raise ConfigError("data.source" if not len(head) else "data.val_size",
                          "the dataset is empty" if not len(head) else
                          f"{held} held-out rows leave no training rows in the stream ({len(head)} rows)",
                          "point data.source at a file with samples" if not len(head) else "lower data.val_size")
    fmt = formats.detect_format(head.column_names) if data.format == "auto" else data.format
    formats.check_read(head, fmt)
    held_out = head.select(range(held)) if held else None
    return Head(stream, held_out, head.select(range(held, len(head))), fmt)


@contextmanager
def quiet_data_logs() -> Iterator[None]:
    """Chunks after the first are prepared while training runs: their data lines would repeat the header's."""
    logger = logging.getLogger("pipeline.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def prepare_rows(rows: Any, fmt: str, run: Any, tokenizer: Any, name: str) -> tuple[Any, Any, formats.Datasets]:
    """One chunk as a whole dataset is prepared: checked, normalized, tokenized and masked, length policy, packed."""
    scanned = formats.check_read(rows, fmt)
    data = dataclasses.replace(run.data, val_size=0, max_samples=None, eval_source=None)
    built = formats.build(data, tokenizer, run.seed, formats.Raw(rows, None, fmt, scanned), run.model.chat_template)
    max_length = run.data.max_length or run.model.max_seq_length
    dataset, stats = prepare.prepare_split(built.train, built, tokenizer, run, name, max_length)
    stats.dropped_without_answer = built.dropped_without_answer
    if run.data.packing and name == "train":
        from trl.data_utils import pack_dataset

        dataset = pack_dataset(dataset, max_length, PACKING_STRATEGY)
    return dataset, stats, built


@dataclass
class TrainStream:
    """The training rows, prepared chunk by chunk as the trainer asks for them, from `start` on."""
    run: Any
    tokenizer: Any
    head: Head
    position: Position = field(default_factory=Position)
    start: Position | None = None  # a checkpoint's position: where a resumed run picks up
    trained: dict | None = None    # the position after the last step trained (the reader runs ahead of it)
    sample: Any = None             # the first chunk, prepared (the sample the statistics describe)

    def source(self) -> Any:
        """The source stream without its held-out head (and capped at data.max_samples), repeated without end."""
        stream = self.head.stream.skip(int(self.run.data.val_size)) if self.run.data.val_size else self.head.stream
        if self.run.data.max_samples:
            stream = stream.take(self.run.data.max_samples)
        return stream.repeat(None)

    def dataset(self) -> Any:
        from datasets import IterableDataset

        return IterableDataset.from_generator(self.rows)

    def rows(self) -> Iterator[dict]:
        source = self.source()
        start = self.start or Position()
        if start.source_state is not None:
            source.load_state_dict(start.source_state)
        self.position = dataclasses.replace(start, row=0)
        skip, chunk_state, reader = start.row, start.source_state, iter(source)
        resumed = self.start is not None
        while True:
            rows = list(islice(reader, self.run.data.streaming_chunk))
            if not rows:
                return
            with quiet_data_logs():
                prepared, _, _ = prepare_rows(rows_from(rows), self.head.format, self.run, self.tokenizer, "train")
            self.position.source_state, self.position.row = chunk_state, skip
            if not resumed:  # the chunk a resumed run reads again was counted before
                self.position.chunks += 1
                self.position.rows_read += len(rows)
            resumed = False
            for index in range(skip, len(prepared)):
                self.position.row, self.position.samples = index + 1, self.position.samples + 1
                yield prepared[index]
            skip, chunk_state = 0, source.state_dict()  # the next chunk starts where this one's rows ended


def rows_from(rows: list[dict]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(rows)


def held_out(run: Any, tokenizer: Any) -> tuple[Any, Any]:
    """(normalized eval rows, their prepared form) as a streamed run built them: the stream's head, or eval_source."""
    head = read_head(run.data)
    rows = head.held_out
    if rows is None and run.data.eval_source not in (None, "", []):
        rows = sources.load_source(run.data, run.data.eval_source, key="data.eval_source")
    if rows is None:
        raise ConfigError("run", "the run trained without a held-out split (data.val_size=0, no eval_source)",
                          "train with data.val_size > 0 or data.eval_source to evaluate")
    prepared, _, built = prepare_rows(rows, head.format, run, tokenizer, "eval")
    return built.train, prepared
