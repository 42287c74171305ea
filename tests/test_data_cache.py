"""The prepared-data cache: keyed on the raw inputs and the code that prepares them, looked up before the sources
are read, and saying why it was not used when the code changed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from conftest import REPO, compose

from pipeline.config import to_runconfig
from pipeline.data import cache, formats, prepare


def quickstart(*overrides: str):
    return to_runconfig(compose("experiment=quickstart", "eval.before_after=false", *overrides))


def prepared(run):  # noqa: ANN001, ANN201
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    return prepare.prepare(formats.build(run.data, tokenizer, run.seed), tokenizer, run)


def test_a_cached_run_does_not_read_its_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key needs no reading: the second run maps the stored files and never calls the readers."""
    from pipeline.train.data import Cached, read_data, setup_data

    run = quickstart()
    first = setup_data(run, read_data(run))
    assert not first.prepared.from_cache

    def no_reading(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the sources were read again")

    monkeypatch.setattr(formats, "read", no_reading)
    raw = read_data(run)
    assert isinstance(raw, Cached)
    second = setup_data(run, raw)
    assert second.prepared.from_cache and second.source_format == first.source_format == "messages"
    assert second.prepared.train["input_ids"] == first.prepared.train["input_ids"]
    assert second.conversation == first.conversation  # what export checks the template against


def test_an_edit_to_the_data_code_prepares_again_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    code = tmp_path / "data"
    shutil.copytree(REPO / "pipeline" / "data", code)
    monkeypatch.setattr(cache, "CODE", code)
    cache.code_fingerprint.cache_clear()
    try:
        run = quickstart()
        assert not prepared(run).from_cache
        assert prepared(run).from_cache
        with (code / "formats.py").open("a") as f:
            f.write("# a comment is an edit too\n")
        cache.code_fingerprint.cache_clear()
        with caplog.at_level(logging.INFO, logger="pipeline.data.cache"):
            again = prepared(run)
        assert not again.from_cache
        assert "data: prepared again: the data code (pipeline/data) changed since these inputs were cached" in \
            caplog.text
    finally:
        cache.code_fingerprint.cache_clear()  # the next test's fingerprint is the repository's code again


def test_the_key_follows_the_tokenizer_files_and_the_template(tmp_path: Path) -> None:
    """A tokenizer file changed, another chat template asked for, or another backend applying it: another key."""
    model = tmp_path / "model"
    shutil.copytree(REPO / "assets" / "tiny-llama", model)
    run = quickstart(f"model.name={model}")
    key = cache.cache_key(run, 256)
    assert cache.cache_key(quickstart(f"model.name={model}", "model.chat_template=llama-3.1"), 256) != key
    assert cache.cache_key(quickstart(f"model.name={model}", "backend=hf"), 256) != key
    config = model / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length"', '"model_max_length" ', 1) + "\n")
    assert cache.cache_key(run, 256) != key
    assert cache.cache_key(quickstart("model.name=nobody/not-downloaded"), 256) is None  # not known from files


def test_an_edited_helper_of_a_mapped_function_changes_the_next_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets fingerprints a mapped function without the helpers it calls: were its own cache used, the second
    build would hand back the first one's rows."""
    from transformers import AutoTokenizer

    run = quickstart(f"data.source={REPO / 'assets' / 'data' / 'tiny_alpaca.jsonl'}", "data.format=alpaca")
    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    first = formats.build(run.data, tokenizer, run.seed)
    monkeypatch.setattr(formats, "_text", lambda value: "" if value is None else str(value).upper())
    second = formats.build(run.data, tokenizer, run.seed)
    assert first.train[0]["completion"][0]["content"].upper() == second.train[0]["completion"][0]["content"]
    assert first.train[0]["completion"][0]["content"] != second.train[0]["completion"][0]["content"]


def test_the_held_out_split_follows_the_seed() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama")

    def held_out(seed: int) -> list:
        run = quickstart(f"seed={seed}")
        return formats.build(run.data, tokenizer, run.seed).eval["messages"]

    assert held_out(3407) == held_out(3407) and held_out(3407) != held_out(1)


def test_evaluate_rebuilds_the_rows_the_run_recorded(finished_run: Path) -> None:
    """The quickstart's adapter/reference.json holds its first held-out samples as training tokenized them;
    evaluate's held-out split rebuilt from the recorded config starts with exactly those."""
    import json

    from transformers import AutoTokenizer

    from pipeline.after.evaluate import held_out
    from pipeline.after.finished import open_finished_run

    run = open_finished_run(str(finished_run))
    recorded = json.loads((finished_run / "adapter" / "reference.json").read_text())["samples"]
    _, tokenized = held_out(run, AutoTokenizer.from_pretrained(finished_run / "adapter"))
    rebuilt = [{"input_ids": row["input_ids"], "labels": row["labels"]}
               for row in tokenized.select(range(len(recorded)))]
    assert rebuilt == recorded


def test_a_damaged_cache_entry_is_prepared_again(caplog: pytest.LogCaptureFixture) -> None:
    """A cut Arrow file in the cache (a full disk, a crash elsewhere) is found by its size, removed, and the data is
    prepared again: the run goes on with the rows it would have made."""
    from pipeline.train.data import read_data, setup_data

    run = quickstart()
    first = setup_data(run, read_data(run))
    folder = first.prepared.cache_dir
    arrow = next((folder / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    again = setup_data(run, read_data(run))
    assert not again.prepared.from_cache and "is damaged (its files differ from those written)" in caplog.text
    assert again.prepared.train["input_ids"] == first.prepared.train["input_ids"]
    assert setup_data(run, read_data(run)).prepared.from_cache  # stored whole again


def test_a_file_replaced_with_the_same_size_and_time_is_prepared_again(tmp_path: Path) -> None:
    """The key reads the first and last MiB of each source: same size, same mtime, other content is a miss."""
    import os

    source = tmp_path / "data.jsonl"
    shutil.copy(REPO / "assets" / "data" / "tiny_messages.jsonl", source)
    run = quickstart(f"data.source={source}")
    before = cache.cache_key(run, 256)
    stat = source.stat()
    text = source.read_text()
    source.write_text(text.replace("fox", "cat", 1))  # the same length
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size and source.stat().st_mtime_ns == stat.st_mtime_ns
    assert cache.cache_key(run, 256) != before
    hits = cache._content_sample.cache_info().hits
    cache.data_fingerprint(run.data)
    assert cache._content_sample.cache_info().hits == hits + 1  # the run's fingerprint reads the file no more


def test_several_processes_write_the_cache_in_shards() -> None:
    """data.num_proc=2 (as large data gets by itself): the cache is written a shard per process and reads back as
    the same rows, checked whole by its files record."""
    from pipeline.train.data import read_data, setup_data

    run = quickstart("data.num_proc=2")
    first = setup_data(run, read_data(run))
    folder = first.prepared.cache_dir
    assert len(list((folder / "train").glob("*.arrow"))) == 2
    again = setup_data(run, read_data(run))
    assert again.prepared.from_cache and again.prepared.train["input_ids"] == first.prepared.train["input_ids"]
