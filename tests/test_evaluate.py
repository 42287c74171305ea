"""`python -m pipeline.evaluate`: the held-out split as the run built it, base and trained side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e


def test_evaluate_scores_base_and_trained_on_the_runs_held_out_split(finished_run: Path, tmp_path: Path,
                                                                    home: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    result = run_cli("pipeline.evaluate", f"run={run_dir}", "eval.max_new_tokens=16", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    figures = json.loads((run_dir / "eval.json").read_text())
    assert summary["eval"] == figures and summary["status"] == "completed"  # the rest of the summary is kept
    before, after = figures["before"], figures["after"]
    assert figures["samples"] == summary["eval_samples"] == 7  # the run's own held-out split
    assert after["loss"] < before["loss"] and after["perplexity"] < before["perplexity"]
    # the same held-out tokens the trainer evaluated at the end (its mean is per batch, this one per token)
    assert abs(after["loss"] - summary["eval_loss"]) < 0.05
    assert before["answers"]["prompts"] == after["answers"]["prompts"] == 7
    assert 0 <= after["answers"]["exact_match"] <= after["answers"]["contains"] <= 7
    assert f"eval loss {before['loss']:.4f} -> {after['loss']:.4f}" in result.stdout
    assert "exact match on 7 held-out prompts:" in result.stdout
