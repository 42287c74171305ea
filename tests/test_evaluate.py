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
    assert figures["samples"] == summary["eval_samples"] == 8  # the run's own held-out split
    assert after["loss"] < before["loss"] and after["perplexity"] < before["perplexity"]
    # the same held-out tokens the trainer evaluated at the end (its mean is per batch, this one per token)
    assert abs(after["loss"] - summary["eval_loss"]) < 0.05
    assert before["answers"]["prompts"] == after["answers"]["prompts"] == 8
    assert 0 <= after["answers"]["exact_match"] <= after["answers"]["contains"] <= 8
    assert f"eval loss {before['loss']:.4f} -> {after['loss']:.4f}" in result.stdout
    assert "exact match on 8 held-out prompts:" in result.stdout
    # the figures join the training's own W&B run (offline here: a second offline segment with the same id)
    segments = sorted((run_dir / "wandb").glob(f"offline-run-*-{summary['wandb_run_id']}"))
    assert len(segments) == 2 and b"eval/before/loss" in next(segments[-1].glob("*.wandb")).read_bytes()
    assert "summary.json and W&B" in result.stdout


def test_lm_eval_needs_a_merged_export_and_the_extra(tmp_path: Path) -> None:
    import importlib.util

    from pipeline.after.evaluate import check_harness
    from pipeline.after.finished import FinishedRun
    from pipeline.errors import ConfigError

    run = FinishedRun(tmp_path, None, {})
    assert check_harness(run, []) is None  # not asked: nothing to check
    with pytest.raises(ConfigError, match="eval.lm_eval_tasks: there is no merged export in .* Write it first: "
                                          "python -m pipeline.export run="):
        check_harness(run, ["hellaswag"])
    merged = tmp_path / "export" / "merged_16bit"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="the merged export in .* has no weights"):  # deleted since the export
        check_harness(run, ["hellaswag"])
    (merged / "model.safetensors").write_bytes(b"")
    if importlib.util.find_spec("lm_eval") is None:  # the optional extra, not installed by make setup
        with pytest.raises(ConfigError, match=r'eval.lm_eval_tasks: lm-evaluation-harness is not installed. Install '
                                              r'the extra: pip install -e "\.\[lm-eval\]"'):
            check_harness(run, ["hellaswag"])
    else:
        assert check_harness(run, ["hellaswag"]) == merged
