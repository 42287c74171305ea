"""Several sources (data.sources): each in its own format, mixed by concat or by a seeded, weighted interleave; per-
source counts in the header and summary.json; a source's mistakes named by its own key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, compose, run_cli

from pipeline.config import to_runconfig
from pipeline.errors import ConfigError

DATA = REPO / "assets" / "data"
def sources_override(**entries: dict) -> str:
    inner = ", ".join(f"{name}: {{{', '.join(f'{k}: {v}' for k, v in entry.items())}}}"
                      for name, entry in entries.items())
    return f"data.sources={{{inner}}}"


def mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str):
    from transformers import AutoTokenizer

    from pipeline.data import mixing

    monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / "cache"))
    run = to_runconfig(compose("experiment=quickstart", "eval.before_after=false", *overrides))
    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    return mixing.prepare_sources(run, tokenizer, mixing.read_sources(run))


def test_two_formats_concatenate_each_held_out_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = mixed(tmp_path, monkeypatch, sources_override(
        chat={"source": DATA / "tiny_messages.jsonl"}, instruct={"source": DATA / "tiny_alpaca.jsonl",
                                                                 "format": "alpaca"}))
    assert result.per_source["chat"]["format"] == "messages" and result.per_source["instruct"]["format"] == "alpaca"
    for name in ("chat", "instruct"):
        facts = result.per_source[name]
        assert (facts["train_samples"], facts["eval_samples"], facts["in_mix"]) == (72, 8, 72)
    assert len(result.prepared.train) == 144 and len(result.prepared.eval) == 16
    assert result.prepared.stats["train"].trained_tokens == sum(f["trained_tokens"] for f in result.per_source.values())
    assert set(result.prepared.train.column_names) == {"input_ids", "labels"}


def write_text_rows(path: Path, word: str, count: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"{word} {i}"}) + "\n" for i in range(count)))
    return path


@pytest.mark.parametrize("weights", [(0.75, 0.25), (0.5, 0.5)])
def test_a_seeded_interleave_draws_by_weight(weights: tuple[float, float], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' interleave_datasets with the weights as probabilities: on 2,000+ samples the share of each source
    is its weight within 5%, and the same seed draws the same mix."""
    a, b = write_text_rows(tmp_path / "a.jsonl", "apple", 3000), write_text_rows(tmp_path / "b.jsonl", "berry", 3000)
    overrides = (sources_override(a={"source": a, "weight": weights[0]}, b={"source": b, "weight": weights[1]}),
                 "data.mix=interleave", "data.val_size=0")
    first = mixed(tmp_path / "one", monkeypatch, *overrides)
    drawn = {name: facts["in_mix"] for name, facts in first.per_source.items()}
    total = sum(drawn.values())
    assert total >= 2000
    for name, weight in zip(("a", "b"), weights, strict=True):
        assert abs(drawn[name] / total - weight) < 0.05, drawn
    again = mixed(tmp_path / "two", monkeypatch, *overrides)
    assert again.prepared.train["input_ids"] == first.prepared.train["input_ids"]


@pytest.mark.parametrize("override,key,problem", [
    (sources_override(chat={"source": DATA / "tiny_messages.jsonl", "format": "alpca"}), "data.sources.chat.format",
     "'alpca' is not allowed"),
    (sources_override(chat={"source": DATA / "tiny_messages.jsonl", "wieght": 2}), "data.sources.chat.wieght",
     "unknown key"),
    (sources_override(chat={"format": "alpaca"}), "data.sources.chat.source", "is not set"),
    (sources_override(chat={"source": DATA / "tiny_messages.jsonl", "weight": 0.5}), "data.sources.chat.weight",
     "0.5 applies to data.mix=interleave"),
    (sources_override(chat={"source": DATA / "tiny_messages.jsonl", "weight": -1}), "data.sources.chat.weight",
     "-1 is out of range: must be positive"),
])
def test_a_source_setting_is_named_by_its_own_key(override: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        to_runconfig(compose("experiment=quickstart", override))
    assert caught.value.key == key and caught.value.problem.startswith(problem), caught.value.line()


def test_a_source_whose_data_is_wrong_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q"}\n')
    with pytest.raises(ConfigError) as caught:
        mixed(tmp_path, monkeypatch, sources_override(chat={"source": DATA / "tiny_messages.jsonl"},
                                                      instruct={"source": bad, "format": "alpaca"}))
    assert caught.value.key == "data.sources.instruct.format", caught.value.line()


@pytest.mark.e2e
def test_the_mix_experiment_trains_and_records_each_source(tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart_mix", "logger=wandb", "logger.mode=offline",
                     "trainer.max_steps=4", "eval.before_after=false", "data.sources.tools.weight=0.4",
                     f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    sources = summary["data_sources"]
    assert list(sources) == ["chat", "instruct", "tools"] and sources["tools"]["weight"] == 0.4
    assert sum(s["in_mix"] for s in sources.values()) == summary["train_samples"]
    assert [s["format"] for s in sources.values()] == ["messages", "alpaca", "messages"]
    assert "sources          : chat: " in result.stdout + result.stderr
    # and in W&B's summary, source by source
    from pipeline.outputs.tracking import data_figures

    figures = data_figures(summary)
    assert figures["data/tools/in_mix"] == sources["tools"]["in_mix"] and "data/chat/trained_tokens" in figures
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    assert b"data/tools/in_mix" in next(offline.glob("*.wandb")).read_bytes()
