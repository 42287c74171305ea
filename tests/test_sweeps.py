"""Sweeps beyond a grid: Optuna's search (`hparams_search=`), and jobs handed to submitit's launcher."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_optuna_search_of_three_trials_names_its_best(tmp_path: Path, home: Path) -> None:
    sweep = tmp_path / "search"
    result = run_cli("pipeline.train", "hparams_search=lora_optuna", "experiment=quickstart", "logger=none",
                     "hydra.sweeper.n_trials=3", "trainer.max_steps=2", f"hydra.sweep.dir={sweep}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit())
    summaries = [summary_of(d) for d in jobs]
    assert len(jobs) == 3 and all(s["status"] == "completed" for s in summaries)
    import yaml

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(range(3), key=lambda i: summaries[i]["eval_loss"])
    assert results["best_value"] == summaries[best]["eval_loss"]  # train returned the objective: eval loss
    assert set(results["best_params"]) == {"trainer.learning_rate", "lora.r", "lora.alpha", "lora/target_modules"}
    reported = re.search(r"optuna best trial: objective ([\d.]+), job (\d+) \((.*)\)", result.stdout)
    assert reported and int(reported.group(2)) == best, result.stdout[-3000:]
    assert reported.group(3) in (sweep / "sweep_summary.md").read_text()
    config = (jobs[best] / "config.resolved.yaml").read_text()
    assert f"r: {results['best_params']['lora.r']}\n" in config
