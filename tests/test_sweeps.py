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


# the README's way to change one parameter's space (a dotted parameter name goes in a mapping: Hydra would read
# `hydra.sweeper.params.lora.r=...` as the nested key lora -> r, and choice(...) as a sweep of Hydra's own config)
NARROWER = 'hydra.sweeper.params={lora.r:"choice(8,16)"}'


def test_optuna_search_of_three_trials_names_its_best(tmp_path: Path, home: Path) -> None:
    from conftest import REPO

    assert f"`'{NARROWER}'`" in (REPO / "README.md").read_text()  # the line the README gives, tested as it is
    sweep = tmp_path / "search"
    result = run_cli("pipeline.train", "hparams_search=lora_optuna", "experiment=quickstart", "logger=none",
                     "hydra.sweeper.n_trials=3", "trainer.max_steps=2", NARROWER, f"hydra.sweep.dir={sweep}",
                     home=home)
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
    ranks = {yaml.safe_load((job / "config.resolved.yaml").read_text())["lora"]["r"] for job in jobs}
    assert ranks <= {8, 16}  # the narrowed space


def test_two_jobs_through_submitits_local_executor_both_complete(tmp_path: Path, home: Path) -> None:
    """hydra/launcher=slurm_local: the slurm preset's launcher with submitit's local executor (no cluster)."""
    result = run_cli("pipeline.train", "-m", "hydra/launcher=slurm_local", "experiment=quickstart", "logger=none",
                     "trainer.max_steps=2", "lora.r=4,8", home=home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # the default sweep directory: the jobs, in processes of their own, agree with the sweep on its time
    [sweep] = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit())
    assert [summary_of(d)["status"] for d in jobs] == ["completed", "completed"]
    assert {summary_of(d)["trainable_params"] for d in jobs} == {16384 // 2, 16384}  # all_linear at r=4 and r=8
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # each ran as a submitit job
    assert "sweep: 2 jobs, 0 failed" in result.stdout  # the summary of jobs that ran in other processes


def test_a_requeued_job_continues_with_resume_auto() -> None:
    """What submitit runs again after a preemption or time limit (the launcher's `checkpoint`)."""
    from hydra_plugins.pipeline_launchers import ResumingLocalLauncher, with_resume_auto

    assert with_resume_auto(["lora.r=8", "resume=null"]) == ["lora.r=8", "resume=auto"]
    launcher = ResumingLocalLauncher()
    requeued = launcher.checkpoint(["lora.r=8"], "hydra.sweep.dir", 3, "job_id_for_3", {})
    assert requeued.function is launcher and requeued.args == (["lora.r=8", "resume=auto"], "hydra.sweep.dir", 3,
                                                              "job_id_for_3", {})


def test_the_slurm_preset_composes_with_its_fields_and_no_cluster(home: Path) -> None:
    result = run_cli("pipeline.train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.account=lab", "--cfg", "hydra", "-p", "hydra.launcher", home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    import yaml

    launcher = yaml.safe_load(result.stdout)
    assert launcher["_target_"] == "hydra_plugins.pipeline_launchers.ResumingSlurmLauncher"
    assert (launcher["partition"], launcher["account"], launcher["gpus_per_node"]) == ("gpu", "lab", 1)
    assert launcher["max_num_timeout"] > 0  # a job at its time limit is requeued
    wrong = run_cli("pipeline.train", "hydra/launcher=slurm", "hydra.launcher.gpus=2", "--cfg", "hydra", home=home)
    assert wrong.returncode == 2 and "hydra.launcher.gpus" in wrong.stderr and "Traceback" not in wrong.stderr


def test_jobs_side_by_side_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from hydra_plugins.pipeline_launchers import share_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    share_cores(1)
    assert "OMP_NUM_THREADS" not in os.environ  # one job keeps torch's default
    share_cores(2)
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    share_cores(2)
    assert os.environ["OMP_NUM_THREADS"] == "3"  # the user's choice stays


def test_a_job_with_a_damaged_summary_is_named_in_the_table(tmp_path: Path) -> None:
    from pipeline.outputs import sweep

    job = tmp_path / "0"
    job.mkdir()
    (job / "summary.json").write_text('{"status": "compl')
    row = sweep.row_of(job, None)
    assert row["status"] == "damaged" and row["error"] == f"{job}/summary.json is damaged (not a JSON object of a " \
        "run's summary)"


def test_failed_jobs_under_submitit_are_listed_by_the_sweep(tmp_path: Path, home: Path) -> None:
    """A job that fails in its own process (submitit): the sweep still ends with one line for it, no traceback."""
    result = run_cli("pipeline.train", "-m", "hydra/launcher=slurm_local", "experiment=quickstart", "logger=none",
                     "trainer.max_steps=2", "lora.r=0,4", home=home, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == "1 job(s) failed:" and lines[-1].startswith("  job 0 (") and \
        "): error: lora.r: 0 is out of range: must be at least 1" in lines[-1], lines[-4:]
    assert "| 1 | " in result.stdout and "completed" in result.stdout  # the other job ran to its end
