"""data.streaming: a run reads its source as a stream, chunk by chunk, and a killed run resumes at the sample where
its checkpoint stood (datasets' state_dict), so every sample is trained once and the result is the uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from test_resume import adapter_tensors, start, summary_of, wait_for_checkpoint

from pipeline.train.stream_position import POSITION_FILE

pytestmark = pytest.mark.e2e
STEPS, BATCH, ACCUMULATION = 24, 4, 2  # 8 samples a step: 192 of the 300 rows, in chunks of 50
STREAM = ["experiment=quickstart", "logger=none", "data.streaming=true", "data.val_size=0", "data.streaming_chunk=50",
          f"trainer.max_steps={STEPS}", f"trainer.per_device_train_batch_size={BATCH}",
          f"trainer.gradient_accumulation_steps={ACCUMULATION}", "trainer.save_steps=8", "trainer.logging_steps=1",
          "trainer.save_total_limit=null", "eval.before_after=false"]


def numbered_rows(path: Path, count: int = 300) -> Path:
    """`count` distinct conversations: the shipped ones, each asked with its number."""
    shipped = [json.loads(line) for line in (REPO / "assets/data/tiny_messages.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for number in range(count):
            row = json.loads(json.dumps(shipped[number % len(shipped)]))
            row["messages"][0]["content"] = f"Scene {number}. " + row["messages"][0]["content"]
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return numbered_rows(tmp_path / "corpus.jsonl")


def test_a_stream_trains_and_says_how_far_it_read(corpus: Path, tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", *STREAM, f"data.source={corpus}", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(run_dir)
    assert summary["status"] == "completed" and summary["train_samples"] is None  # a stream has no length
    stream = summary["data_stream"]
    # 24 steps of 8 samples: 192 samples trained, from the 4 chunks of 50 rows read (the reader runs ahead)
    assert stream["samples"] == STEPS * BATCH * ACCUMULATION and (stream["chunks"], stream["rows_read"]) == (4, 200)
    assert summary["data_stats"]["train"]["samples"] == 50 and stream["stats_from"] == "the first chunk"
    from pipeline.outputs.tracking import data_figures

    assert data_figures(summary)["data/stream/samples"] == STEPS * BATCH * ACCUMULATION  # W&B's summary keys
    assert "read as a stream in chunks of 50 rows" in result.stderr + result.stdout
    # where the time before the first step went: every part measured, and within the run's own time
    startup = summary["startup_seconds"]
    assert set(startup) == {"data", "model", "model_to_first_step"} and min(startup.values()) >= 0
    assert sum(startup.values()) <= summary["runtime_s"]
    # each checkpoint holds the position after its own step's samples, not the reader's
    for step in (8, 16, 24):
        saved = json.loads((run_dir / "checkpoints" / f"checkpoint-{step}" / POSITION_FILE).read_text())
        assert saved["samples"] == step * BATCH * ACCUMULATION
        assert saved["row"] == (step * BATCH * ACCUMULATION) % 50 or saved["row"] == 50


@pytest.mark.parametrize("lose_position", [False, True], ids=["state-dict", "position-file-lost"])
def test_a_killed_stream_resumes_at_its_sample(lose_position: bool, corpus: Path, tmp_path: Path,
                                               home: Path) -> None:
    settings = [*STREAM, f"data.source={corpus}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run_cli("pipeline.train", *settings, f"hydra.run.dir={whole}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]

    proc = start(home, *settings, f"hydra.run.dir={killed}")
    wait_for_checkpoint(killed, 8, proc)
    proc.kill()  # SIGKILL after a checkpoint
    proc.communicate(timeout=60)
    checkpoints = sorted((killed / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if lose_position:  # stopped between the trainer's files and ours: the trainer skips by reading again
        for checkpoint in checkpoints:
            (checkpoint / POSITION_FILE).unlink(missing_ok=True)

    result = run_cli("pipeline.train", *settings, "resume=auto", f"hydra.run.dir={killed}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(killed)
    assert summary["status"] == "completed" and summary["global_step"] == STEPS
    assert ("has no stream_position.json" in result.stdout + result.stderr) == lose_position
    expected, got = adapter_tensors(whole), adapter_tensors(killed)
    import torch

    # the same samples in the same order, each once: the uninterrupted run's adapter, bit for bit
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert summary["final_loss"] == summary_of(whole)["final_loss"]
    if not lose_position:
        assert summary["data_stream"]["samples"] == STEPS * BATCH * ACCUMULATION


def test_a_damaged_position_file_is_named_on_resume(corpus: Path, tmp_path: Path, home: Path) -> None:
    settings = [*STREAM, f"data.source={corpus}"]
    killed = tmp_path / "killed"
    proc = start(home, *settings, f"hydra.run.dir={killed}")
    wait_for_checkpoint(killed, 8, proc)
    proc.kill()
    proc.communicate(timeout=60)
    for position in (killed / "checkpoints").glob(f"checkpoint-*/{POSITION_FILE}"):
        position.write_text('{"row": 3, "samp')  # cut short

    result = run_cli("pipeline.train", *settings, "resume=auto", f"hydra.run.dir={killed}", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: resume: {killed}/checkpoints/checkpoint-") and \
        f"/{POSITION_FILE} is damaged (not valid JSON: " in line and "Delete it to resume by reading" in line, line


@pytest.mark.parametrize("content", ['["a list"]', '{"row": "3"}', '{"source_state": null, "row": 1, "chunks": 1, '
                                     '"rows_read": 50, "samples": true}', '{"source_state": 5, "row": 1, "chunks": 1, '
                                     '"rows_read": 50, "samples": 8}'])
def test_an_edited_position_file_is_refused(content: str, tmp_path: Path) -> None:
    from pipeline.errors import ConfigError
    from pipeline.train.stream_position import read_position

    saved = tmp_path / "checkpoint-8" / POSITION_FILE
    saved.parent.mkdir()
    saved.write_text(content)
    with pytest.raises(ConfigError, match="is damaged \\(not the position source_state, row, chunks, rows_read, "
                       "samples\\)"):
        read_position(saved)
    saved.write_text('{"source_state": null, "row": 1, "chunks": 1, "rows_read": 50, "samples": 8}')
    assert read_position(saved).samples == 8


def test_a_packed_stream_trains_packed_sequences(corpus: Path, tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "packed"
    result = run_cli("pipeline.train", *STREAM, f"data.source={corpus}", "data.packing=true", "trainer.max_steps=4",
                     f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    stream = summary_of(run_dir)["data_stream"]
    # 256-token sequences hold about six 40-token samples: 4 steps of 8 sequences read more than a chunk of rows
    assert stream["samples"] == 4 * BATCH * ACCUMULATION and stream["rows_read"] > 50


def test_evaluate_and_preprocess_read_the_streams_head(corpus: Path, tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "evaluated"
    settings = [*STREAM, f"data.source={corpus}", "data.val_size=8", "trainer.max_steps=8", "eval.before_after=true"]
    result = run_cli("pipeline.train", *settings, f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(run_dir)
    assert summary["eval_samples"] == 8 and summary["eval"]["samples"] == 8
    preprocessed = run_cli("pipeline.preprocess", *settings, f"hydra.run.dir={tmp_path / 'pre'}", home=home)
    assert preprocessed.returncode == 0, preprocessed.stderr[-3000:]
    assert "streamed: statistics of its first chunk of 50 rows" in preprocessed.stdout
    figures = json.loads((tmp_path / "pre" / "data_stats.json").read_text())
    assert figures["train"]["samples"] == 50 and figures["eval"]["samples"] == 8 and figures["cache_dir"] == "None"
