"""Data sources: a local file, directory or glob (JSON/JSONL, CSV, Parquet, plain text), a hub dataset id, or a list.

Malformed input is named precisely (file and line for JSONL) before `datasets` sees it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any

from pipeline.config.validate import AXOLOTL_KEYS
from pipeline.errors import ConfigError, first_line

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
# per-message loss flags (axolotl's `train`, LLaMA-Factory's `loss_weight`): keys inside each message, which
# data.columns maps like columns (data.columns.train: <the data's key>)
TURN_FLAGS = ("train", "loss_weight")
CONVERSATION_COLUMNS = ("messages", "conversations")
DOCUMENTATION = re.compile(r"^(readme|licen[cs]e|notice|changelog|citation|authors)\b", re.IGNORECASE)
log = logging.getLogger(__name__)


def quiet_progress_bars() -> None:
    """`datasets` progress bars would stand between the user and a one-line error; the header gives the counts."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def local_files(source: str, key: str = "data.source") -> list[str] | None:
    """The data files a local path, directory or glob names; None when `source` is not local. A directory's
    documentation (README, LICENSE, ...) is not data; files of several kinds are refused (each kind is read by its
    own reader: a .txt beside .jsonl files would make every line plain text)."""
    if any(ch in source for ch in "*?["):
        return one_kind(sorted(glob.glob(source, recursive=True)), source, key)
    if os.path.isdir(source):
        return one_kind(sorted(os.path.join(source, f) for f in os.listdir(source)
                               if os.path.splitext(f)[1] in LOCAL_BUILDERS and not DOCUMENTATION.match(f)),
                        source, key)
    if os.path.isfile(source):
        return [source]
    if source.startswith((".", "/", "~")) or os.path.splitext(source)[1] in LOCAL_BUILDERS:
        raise ConfigError(key, f"file not found: {source}", "check the path (relative to where you run)")
    return None


def one_kind(files: list[str], source: str, key: str) -> list[str]:
    """The files, if one reader reads them all; else one line naming a file of each kind."""
    kinds: dict[str, str] = {}
    for path in files:
        kinds.setdefault(LOCAL_BUILDERS.get(os.path.splitext(path)[1], "unknown"), os.path.basename(path))
    if len(kinds) > 1:
        shown = ", ".join(f"{kind}: {example}" for kind, example in sorted(kinds.items()))
        first = os.path.splitext(files[0])[1]
        raise ConfigError(key, f"{source} holds data files of several kinds ({shown})",
                          f"point {key} at one kind, e.g. '{os.path.join(source, '*' + first)}'")
    return files


def load_source(data: Any, source: Any = None, key: str = "data.source") -> Any:
    """One `datasets.Dataset` from data.source (or `source`, read for `key`): a string or a list, concatenated."""
    from datasets import concatenate_datasets, disable_caching

    # datasets caches each .map() by a fingerprint of the mapped function that misses edits to the helpers it
    # calls, and would hand an upgraded pipeline rows its old code made: our own cache (keyed on the data code)
    # keeps the prepared result, so the steps in between are not cached (the files read still are)
    disable_caching()

    source = data.source if source is None else source
    sources = source if isinstance(source, list) else [source]
    parts = [_load_one(str(s), data, key) for s in sources]
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(_aligned(parts, sources, key))
    columns = {new: old for new, old in (data.columns or {}).items() if new not in (*TURN_FLAGS, *AXOLOTL_KEYS)}
    missing = {new: old for new, old in columns.items() if old not in dataset.column_names}
    if missing:
        new, old = next(iter(missing.items()))
        raise ConfigError(f"data.columns.{new}", f"column '{old}' is not in {source} (columns: "
                          f"{', '.join(dataset.column_names)})", "map to one of those columns")
    dataset = dataset.rename_columns({old: new for new, old in columns.items() if old != new})
    flags = {new: old for new, old in (data.columns or {}).items() if new in TURN_FLAGS and old != new}
    if flags and len(dataset):
        dataset = _renamed_message_keys(dataset, flags, source)
    if len(dataset) == 0:
        raise ConfigError(key, "the dataset is empty", f"point {key} at a file with samples")
    return dataset


def _renamed_message_keys(dataset: Any, flags: dict[str, str], source: Any) -> Any:
    """Rename the per-message flag keys data.columns maps (e.g. {train: use_for_training}) in every message."""
    column = next((c for c in CONVERSATION_COLUMNS if c in dataset.column_names), None)
    new, old = next(iter(flags.items()))
    if column is None:
        raise ConfigError(f"data.columns.{new}", f"per-message flags are keys of messages, and {source} has no "
                          f"messages or conversations column", "map columns with data.columns, or drop this entry")
    turns = [turn for conversation in dataset[column] for turn in conversation or [] if isinstance(turn, dict)]
    if not any(turn.get(old) is not None for turn in turns):
        raise ConfigError(f"data.columns.{new}", f"no message in {source} has a key '{old}'",
                          f"name the key that marks the messages to train on (e.g. {new})")

    renamed = {old: new for new, old in flags.items()}

    def rename(row: dict) -> dict:
        return {column: [{renamed.get(key, key): value for key, value in turn.items()} for turn in row[column]]}

    return dataset.map(rename, desc="Mapping per-message flags")


def _aligned(parts: list, sources: list, key: str) -> list:
    """Cast every source to the first one's column types (CSV and JSON disagree on string types)."""
    first = parts[0]
    aligned = [first]
    for part, source in zip(parts[1:], sources[1:], strict=True):
        if sorted(part.column_names) != sorted(first.column_names):
            raise ConfigError(key, f"{source} has columns {part.column_names} but {sources[0]} has "
                              f"{first.column_names}", "give sources with the same columns (or map them)")
        try:
            aligned.append(part if part.features == first.features else part.cast(first.features))
        except (ValueError, TypeError, ArithmeticError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ConfigError(key, f"{source} cannot be read with the column types of {sources[0]}: "
                              f"{first_line(error)}", "give sources with the same column types") from error
    return aligned


def _load_one(source: str, data: Any, key: str) -> Any:
    from datasets import load_dataset

    files = local_files(source, key)
    if files is None:  # a hub dataset id
        try:
            return load_dataset(source, data.subset, split=data.split)
        except Exception as error:  # noqa: BLE001 - network, auth, missing repo or split: all the user's to fix
            raise ConfigError(key, f"cannot load hub dataset '{source}': {first_line(error)}",
                              "check the id, data.subset and data.split, and network access "
                              "(or point data.source at a local file)") from error
    if not files:
        raise ConfigError(key, f"no data files match {source}",
                          f"use {', '.join(sorted(LOCAL_BUILDERS))} files")
    builder = LOCAL_BUILDERS.get(os.path.splitext(files[0])[1])
    if builder is None:
        raise ConfigError(key, f"cannot read {files[0]}",
                          f"use one of {', '.join(sorted(LOCAL_BUILDERS))}")
    if len(files) > 1 or os.path.isdir(source) or any(ch in source for ch in "*?["):
        names = [os.path.relpath(path, source) if os.path.isdir(source) else path for path in files]
        documentation = sorted(f for f in os.listdir(source) if DOCUMENTATION.match(f)) if os.path.isdir(source) \
            else []
        log.info("data: %s: %d file%s read: %s%s", source, len(files), "s" if len(files) > 1 else "",
                 ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else ""),
                 f" (left out as documentation: {', '.join(documentation)})" if documentation else "")
    for path in files:
        if path.endswith(".jsonl"):
            check_jsonl(path, key)
        if path.endswith(".csv"):
            check_csv_header(path, key)
    if all(is_blank(path) for path in files):
        raise ConfigError(key, f"the dataset is empty ({', '.join(files)} has no rows)",
                          f"point {key} at a file with samples")
    try:
        options = {"sample_by": data.sample_by} if builder == "text" else {}  # .txt: a `text` column
        return load_dataset(builder, data_files=files, split="train", **options)
    except Exception as error:  # noqa: BLE001 - a file datasets cannot parse
        raise ConfigError(key, f"cannot parse {', '.join(files)}: {first_line(error)}",
                          "fix the file, or convert it to JSONL") from error


def is_blank(path: str) -> bool:
    with open(path, "rb") as f:
        return not f.read(4096).strip()


def check_csv_header(path: str, key: str = "data.source") -> None:
    """A column named twice in a CSV header: the reader would keep the first and rename the other."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    seen = set()
    for name in header:
        if name in seen:
            raise ConfigError(key, f"{path} has the column '{name}' twice", "rename or remove one of them")
        seen.add(name)


def check_jsonl(path: str, key: str = "data.source") -> None:
    """Name the file and line of the first malformed JSONL record (datasets only says 'failed to generate')."""
    import json

    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ConfigError(key, f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start})",
                                  "save the file as UTF-8") from error
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(key, f"{path}:{number}: not valid JSON ({error.msg})",
                                  "fix or remove that line") from error
            if not isinstance(record, dict):
                raise ConfigError(key, f"{path}:{number}: a JSONL line must be an object",
                                  'write one {"column": value, ...} object per line')
