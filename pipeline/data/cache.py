"""The prepared-data cache: tokenized train/eval sets keyed by all that decides them, written whole or not at all.

Lives under ~/.cache/llm-finetune/prepared (or FT_DATA_CACHE). The key covers the data config, the source files
(path, size, mtime), the tokenizer and template, the length limit, the seed, and which code prepared the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.compat import trl_preparer_name


def cache_root() -> Path:
    return Path(os.environ.get("FT_DATA_CACHE", Path.home() / ".cache" / "llm-finetune" / "prepared"))


def _source_fingerprint(source: Any) -> list:
    """Local files by path, size and mtime (so an edit invalidates the cache); hub ids by name."""
    from pipeline.data.sources import local_files

    items = []
    for s in source if isinstance(source, list) else [source]:
        if s is None:
            continue
        files = local_files(str(s)) or []
        items.append([str(s), [(f, os.path.getsize(f), os.path.getmtime(f)) for f in files]])
    return items


def cache_key(run: Any, tokenizer: Any, max_length: int) -> str:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.structured(run.data), resolve=True)
    data.pop("num_proc", None)  # how many processes tokenize does not change what they make
    key = {"data": data, "sources": _source_fingerprint(run.data.source) + _source_fingerprint(run.data.eval_source),
           "model": run.model.name, "template": getattr(tokenizer, "chat_template", None),
           "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.eos_token], "max_length": max_length,
           "seed": run.seed, "preparer": trl_preparer_name(), "version": 5,
           "method": OmegaConf.to_container(OmegaConf.structured(run.method)) if hasattr(run, "method") else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def load_cached(folder: Path) -> Any:
    """The Prepared sets stored in `folder`, or None when there are none."""
    from datasets import load_from_disk

    from pipeline.data.prepare import LengthStats, Prepared

    if not (folder / "stats.json").is_file():
        return None
    stats = {k: LengthStats(**v) for k, v in json.loads((folder / "stats.json").read_text()).items()}
    evaluation = load_from_disk(str(folder / "eval")) if (folder / "eval").is_dir() else None
    return Prepared(load_from_disk(str(folder / "train")), evaluation, stats, folder, from_cache=True)


def save_cached(folder: Path, prepared: Any) -> None:
    """Whole or not at all: written beside, then renamed (a failed write leaves nothing)."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        prepared.train.save_to_disk(str(tmp / "train"))
        if prepared.eval is not None:
            prepared.eval.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(prepared.stats_dict(), indent=2))
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
