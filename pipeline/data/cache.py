"""The prepared-data cache: tokenized train/eval sets keyed by all that decides them, written whole or not at all.

Lives under ~/.cache/llm-finetune/prepared (or FT_DATA_CACHE). The key is computed from the raw inputs alone, before
anything is read or imported: the data config, the source files (path, size, mtime and a hash of their first and
last MiB), the tokenizer's own files (or a hub model's commit), the chat template asked for and the backend that
applies it, the length limit, the seed, the method, the code that prepares the data (a hash of pipeline/data) and the
versions of the libraries that tokenize.
A cached run then maps the stored Arrow files without reading its sources again (`meta.json` holds what the run
needs besides the rows); an entry whose files are not the ones written (`files.json`: their sizes) is removed and
prepared again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from pipeline.compat import trl_preparer_name

log = logging.getLogger(__name__)
CODE = Path(__file__).parent  # pipeline/data: any edit to its files (a comment too) prepares the data again
LIBRARIES = ("trl", "transformers", "tokenizers", "datasets", "jinja2", "unsloth", "unsloth_zoo")
TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template.*|vocab.*|"
                             r"merges\.txt|.*\.model|config\.json)$")


def cache_root() -> Path:
    return Path(os.environ.get("FT_DATA_CACHE", Path.home() / ".cache" / "llm-finetune" / "prepared"))


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


@functools.cache
def code_fingerprint() -> str:
    """The data code and the tokenizing libraries' versions (read from their metadata: nothing is imported)."""
    from importlib import metadata

    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    return _digest(sorted(CODE.glob("*.py"))) + ";" + ",".join(versions)


def tokenizer_fingerprint(run: Any) -> list | None:
    """The tokenizer as files say it is: a local model's tokenizer files, or a hub model's commit as the local hub
    cache records it; None while a hub model's tokenizer has not been downloaded."""
    folder = Path(run.model.name).expanduser()
    if folder.is_dir():
        return ["local", _digest(sorted(f for f in folder.iterdir() if f.is_file() and TOKENIZER_FILES.match(f.name)))]
    revision = run.model.revision
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return ["hub", run.model.name, revision]
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" /
                                                       "huggingface") / "hub")
    ref = hub / f"models--{run.model.name.replace('/', '--')}" / "refs" / (revision or "main")
    return ["hub", run.model.name, ref.read_text().strip()] if ref.is_file() else None


def _source_fingerprint(source: Any, key: str = "data.source") -> list:
    """Local files by path, size, mtime and a hash of their first and last MiB (so an edit invalidates the cache);
    hub ids by name. A file that is not there is named by `key` (the lookup comes before the data is read)."""
    from pipeline.data.sources import local_files

    items = []
    for s in source if isinstance(source, list) else [source]:
        if s is None:
            continue
        files = local_files(str(s), key) or []
        items.append([str(s), [(f, os.path.getsize(f), os.path.getmtime(f), content_sample(f)) for f in files]])
    return items


def data_fingerprint(data: Any) -> str:
    """What the data files hold (path, size and the hash of their ends; not their times), for a resumed run to tell
    whether its data changed since it started. Hub ids count by name."""
    sources = [entry["source"] for entry in data.sources.values()] if data.sources else [data.source]
    items = []
    for source in [*sources, data.eval_source]:
        if source in (None, "", []):
            continue
        for name, files in _source_fingerprint(source):
            items.append([name, [[path, size, sample] for path, size, _, sample in files]])
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:20]


SAMPLED = 2**20  # bytes read from each end of a data file for its key


def content_sample(path: str) -> str:
    """A hash of a file's first and last MiB: a file replaced by another of the same size and mtime (a copy with
    its times kept, `touch -r`) still changes the key, at the cost of reading 2 MiB, however large the file (once a
    run: the cache key and the data fingerprint share it while the file's size, times and inode stay)."""
    stat = os.stat(path)
    return _content_sample(path, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@functools.lru_cache(maxsize=256)
def _content_sample(path: str, *identity: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(SAMPLED))
        size = f.seek(0, os.SEEK_END)
        if size > SAMPLED:
            f.seek(max(SAMPLED, size - SAMPLED))
            h.update(f.read(SAMPLED))
    return h.hexdigest()[:16]


def cache_key(run: Any, max_length: int) -> str | None:
    """The key of `run`'s prepared data, from its inputs alone; None when the tokenizer is not known from files."""
    from omegaconf import OmegaConf

    tokenizer = tokenizer_fingerprint(run)
    if tokenizer is None:
        return None
    data = OmegaConf.to_container(OmegaConf.structured(run.data), resolve=True)
    data.pop("num_proc", None)  # how many processes tokenize does not change what they make
    method = OmegaConf.to_container(OmegaConf.structured(run.method)) if hasattr(run, "method") else None
    key = {"data": data, "sources": _source_fingerprint(run.data.source) +
           _source_fingerprint(run.data.eval_source, "data.eval_source"),
           "model": run.model.name, "tokenizer": tokenizer, "chat_template": run.model.chat_template,
           "backend": run.backend, "max_length": max_length, "seed": run.seed, "preparer": trl_preparer_name(),
           "method": method}
    return _hash({**key, "code": code_fingerprint()})


def _hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def record_lineage(run: Any, max_length: int, folder: Path) -> None:
    """Remember which code made the data for these inputs, so that a later miss can say the code changed."""
    lineage = folder.parent / "lineage" / f"{_inputs_key(run, max_length)}.json"
    lineage.parent.mkdir(parents=True, exist_ok=True)
    lineage.write_text(json.dumps({"code": code_fingerprint(), "folder": folder.name}))


def _inputs_key(run: Any, max_length: int) -> str:
    """The key without the code: the same inputs, whatever code prepares them."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.structured(run.data), resolve=True)
    data.pop("num_proc", None)
    return _hash({"data": data, "sources": _source_fingerprint(run.data.source), "model": run.model.name,
                  "tokenizer": tokenizer_fingerprint(run), "max_length": max_length, "seed": run.seed,
                  "chat_template": run.model.chat_template, "backend": run.backend})


def why_not_cached(run: Any, max_length: int) -> str | None:
    """Why data prepared before from the same inputs is not used: the code or a library that prepares it changed."""
    lineage = cache_root() / "lineage" / f"{_inputs_key(run, max_length)}.json"
    if not lineage.is_file():
        return None
    before = json.loads(lineage.read_text())["code"]
    if before == code_fingerprint():
        return None
    changed = "the data code (pipeline/data)" if before.split(";")[0] != code_fingerprint().split(";")[0] else \
        "a library that tokenizes (" + ", ".join(sorted(set(code_fingerprint().split(";")[1].split(",")) -
                                                         set(before.split(";")[1].split(",")))) + ")"
    return f"prepared again: {changed} changed since these inputs were cached"


def cache_folder(run: Any, max_length: int) -> Path | None:
    """Where `run`'s prepared data is (or goes); None when it cannot be cached (data.cache=false, key unknown)."""
    if not run.data.cache:
        return None
    key = cache_key(run, max_length)
    return None if key is None else cache_root() / key


def load_meta(folder: Path | None) -> dict | None:
    """What a cached run needs besides the rows (format, tools, kind, a held-out conversation); None if not cached
    (or if the entry is damaged: it is removed, and prepared again)."""
    if folder is None or not (folder / "meta.json").is_file() or not (folder / "stats.json").is_file():
        return None
    if not intact(folder):
        return None
    return json.loads((folder / "meta.json").read_text())


FILES_RECORD = "files.json"  # every stored file's size, checked before an entry is used


def stored_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != FILES_RECORD}


def intact(folder: Path) -> bool:
    """Whether a cache entry holds the files it was written with, at their sizes (a cut Arrow file, one deleted,
    or an unreadable record is damage): a damaged entry is removed and said, and the data prepared again."""
    import shutil

    try:
        recorded = json.loads((folder / FILES_RECORD).read_text())
        json.loads((folder / "meta.json").read_text())
        json.loads((folder / "stats.json").read_text())
    except FileNotFoundError:
        return not (folder / FILES_RECORD).exists() and (folder / "meta.json").exists()  # an entry from before
    except (json.JSONDecodeError, UnicodeDecodeError):
        recorded = None
    if recorded == stored_files(folder):
        return True
    log.warning("data: the cached entry %s is damaged (its files differ from those written): prepared again", folder)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def load_cached(folder: Path) -> Any:
    """The Prepared sets stored in `folder`, or None when there are none."""
    from datasets import load_from_disk

    from pipeline.data.prepare import LengthStats, Prepared

    if not (folder / "stats.json").is_file() or not intact(folder):
        return None
    stats = {k: LengthStats(**v) for k, v in json.loads((folder / "stats.json").read_text()).items()}
    evaluation = load_from_disk(str(folder / "eval")) if (folder / "eval").is_dir() else None
    return Prepared(load_from_disk(str(folder / "train")), evaluation, stats, folder, from_cache=True)


def save_cached(folder: Path, prepared: Any, meta: dict, num_proc: int | None = None) -> None:
    """Whole or not at all: written beside, then renamed (a failed write leaves nothing). Large sets are written by
    `num_proc` processes, a shard each: this process then never reads the prepared rows' pages itself."""
    import shutil

    from pipeline.data.prepare import processes

    tmp = folder.with_name(folder.name + ".tmp")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        prepared.train.save_to_disk(str(tmp / "train"), num_proc=processes(num_proc, len(prepared.train)))
        if prepared.eval is not None:
            prepared.eval.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(prepared.stats_dict(), indent=2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / FILES_RECORD).write_text(json.dumps(stored_files(tmp)))
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lookup(run: Any, max_length: int) -> tuple[Path | None, Any]:
    """(where `run`'s prepared data goes, the sets stored there or None); a miss that a change of the data code or
    of a library explains is said in one line."""
    folder = cache_folder(run, max_length)
    if folder is None:
        return None, None
    cached = load_cached(folder)
    if cached is None and (reason := why_not_cached(run, max_length)):
        log.info("data: %s", reason)
    return folder, cached


def store(run: Any, max_length: int, folder: Path | None, prepared: Any, meta: dict, write: bool) -> None:
    """The prepared sets into the cache (not by the processes of a launch other than rank 0: `write`). A cache is
    a saving, not a result: one that cannot be written leaves the run going, and says so."""
    if folder is None or not write or folder.exists():
        return
    try:
        save_cached(folder, prepared, meta, run.data.num_proc)
        record_lineage(run, max_length, folder)
    except OSError as error:
        log.warning("data: cache not written (%s: %s); set FT_DATA_CACHE to a writable folder or data.cache=false",
                    folder, error.strerror or error)
        prepared.cache_dir = None
