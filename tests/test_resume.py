"""A run that never loses work: kill and resume exactly, stop gracefully on signals, never overwrite a run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, offline_env, quickstart_eval_off, run_cli

from pipeline.outputs.rundir import is_complete_checkpoint

pytestmark = pytest.mark.e2e
# long enough to be stopped half-way on purpose; no eval split, so every step is training
STEPS = 40
LONG = ["experiment=quickstart", "logger=none", "data.val_size=0", f"trainer.max_steps={STEPS}",
        "trainer.save_steps=10", "trainer.logging_steps=1", "trainer.save_total_limit=null"]


def start(home: Path, *overrides: str) -> subprocess.Popen:
    """The CLI as a child of Python (a shell's background job would ignore SIGINT)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", *quickstart_eval_off(overrides)], cwd=REPO,
                            env=offline_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if is_complete_checkpoint(run_dir / "checkpoints" / f"checkpoint-{step}"):
            return
        time.sleep(0.02)
    raise AssertionError(f"no complete checkpoint-{step} while the run was going (exit {proc.poll()})")


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("setting", [["backend=unsloth", "quantization=nf4"], ["backend=hf", "quantization=none"],
                                     ["backend=unsloth", "quantization=nf4", "model.name=untrained-rows"],
                                     ["backend=unsloth", "quantization=nf4", "method=dpo",
                                      f"data.source={REPO / 'assets' / 'data' / 'tiny_dpo.jsonl'}"]],
                         ids=["unsloth-nf4", "hf-16bit", "unsloth-nf4-untrained-token-rows", "unsloth-nf4-dpo"])
def test_killed_and_resumed_equals_uninterrupted(setting: list[str], tmp_path: Path, home: Path) -> None:
    if "model.name=untrained-rows" in setting:  # a base whose template tokens' rows the run trains (PEFT's tokens)
        from conftest import zeroed_copy

        setting = [*setting[:2], f"model.name={zeroed_copy(tmp_path / 'tiny-llama-base')}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = run_cli("pipeline.train", *LONG, *setting, f"hydra.run.dir={whole}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]

    proc = start(home, *LONG, *setting, f"hydra.run.dir={killed}")
    wait_for_checkpoint(killed, 20, proc)
    proc.kill()  # SIGKILL: no handler runs, whatever was being written stays as it was
    proc.communicate(timeout=60)
    assert summary_of(killed)["status"] == "running"  # a killed run never looks finished

    result = run_cli("pipeline.train", *LONG, *setting, "resume=auto", f"hydra.run.dir={killed}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(killed)
    assert summary["status"] == "completed" and summary["global_step"] == STEPS
    assert int(summary["resumed_from"].rsplit("-", 1)[-1]) >= 20  # the newest complete checkpoint
    expected, got = adapter_tensors(whole), adapter_tensors(killed)
    assert expected.keys() == got.keys()
    import torch

    assert all(torch.equal(expected[k], got[k]) for k in expected)  # bitwise
    steps = logged_steps(killed)
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # each step once
    assert summary["final_loss"] == summary_of(whole)["final_loss"]
    # the token count goes on from the checkpoint's row: the resumed run's totals are the uninterrupted run's
    assert (summary["tokens_seen"], summary["tokens_trained"]) == \
        (summary_of(whole)["tokens_seen"], summary_of(whole)["tokens_trained"])


def stop_with(signum: int, run_dir: Path, home: Path, *overrides: str, before: Any = None) -> str:
    """Start a long run, send `signum` once a checkpoint exists (after `before(proc)`), and return its stderr."""
    proc = start(home, *LONG, *overrides, f"hydra.run.dir={run_dir}")
    try:
        wait_for_checkpoint(run_dir, 10, proc)
        if before is not None:
            before(proc)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=60)
        raise
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr[-2000:]
    assert "Traceback" not in stderr and "continue it with resume=auto" in stderr
    return stderr


def test_sigint_stops_after_a_checkpoint_and_resume_completes(tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    stop_with(signal.SIGINT, run_dir, home, "logger=wandb")  # offline: no credentials here
    summary = summary_of(run_dir)
    wandb_id = summary["wandb_run_id"]
    assert summary["status"] == "interrupted" and 10 <= summary["global_step"] < STEPS
    newest = run_dir / "checkpoints" / f"checkpoint-{summary['global_step']}"
    assert is_complete_checkpoint(newest)  # the step it stopped at was saved whole
    assert not (run_dir / "adapter").exists()  # an interrupted run has no final adapter

    result = run_cli("pipeline.train", *LONG, "logger=wandb", "resume=auto", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(run_dir)["status"] == "completed" and summary_of(run_dir)["global_step"] == STEPS
    assert summary_of(run_dir)["wandb_run_id"] == wandb_id  # the same W&B run goes on
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))) == 2


def test_sigterm_stops_the_same_way_with_exit_143(tmp_path: Path, home: Path) -> None:
    """Also: while it trains, summary.json says running with its pid, and a second run into it is refused."""
    run_dir = tmp_path / "run"

    def while_running(proc: subprocess.Popen) -> None:
        summary = summary_of(run_dir)
        assert summary["status"] == "running" and summary["pid"] == proc.pid
        second = run_cli("pipeline.train", *LONG, "resume=auto", f"hydra.run.dir={run_dir}", home=home)
        assert second.returncode == 2 and f"is in use by a running training (pid {proc.pid})" in second.stderr

    stop_with(signal.SIGTERM, run_dir, home, "trainer.max_steps=100000", before=while_running)  # still going
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted"
    assert is_complete_checkpoint(run_dir / "checkpoints" / f"checkpoint-{summary['global_step']}")


# `finished_run` (conftest): the quickstart run (30 steps) the tests below try to continue or
# overwrite, each on its own copy (the run is shared by the session's workers)
FINISHED_STEPS = 30


@pytest.fixture
def finished(finished_run: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "done"
    shutil.copytree(finished_run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def test_resume_refuses_a_changed_lora_shape(finished: Path, home: Path) -> None:
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"trainer.max_steps={FINISHED_STEPS}",
                     "lora.r=8", "resume=auto", f"hydra.run.dir={finished}", home=home)
    assert result.returncode == 2
    assert result.stderr.startswith("error: resume: the config differs from the run's in lora.r (16 -> 8)")
    assert summary_of(finished)["status"] == "completed"  # untouched


def test_resuming_a_finished_trains_nothing(finished: Path, home: Path) -> None:
    before = (finished / "adapter" / "adapter_model.safetensors").read_bytes()
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"trainer.max_steps={FINISHED_STEPS}",
                     "trainer.logging_steps=1", "resume=auto", f"hydra.run.dir={finished}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"already completed at step {FINISHED_STEPS}: nothing left to train" in result.stdout + result.stderr
    assert summary_of(finished)["global_step"] == FINISHED_STEPS
    assert (finished / "adapter" / "adapter_model.safetensors").read_bytes() == before
    elsewhere = finished.parent / "elsewhere"  # resume=<run dir>: the run is continued where it lives
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"trainer.max_steps={FINISHED_STEPS}",
                     f"resume={finished}", f"hydra.run.dir={elsewhere}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing left to train" in result.stdout + result.stderr and not elsewhere.exists()


def test_a_finished_is_never_overwritten(finished: Path, home: Path) -> None:
    before = (finished / "summary.json").read_text()
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"hydra.run.dir={finished}",
                     home=home)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: hydra.run.dir: {finished} already holds a completed run")
    assert (finished / "summary.json").read_text() == before


def test_killed_after_its_last_checkpoint_trains_nothing_more(finished_run: Path, tmp_path: Path,
                                                             home: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    run_dir = tmp_path / "killed-at-the-end"
    shutil.copytree(finished_run, run_dir, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(run_dir / "adapter")  # as if killed between the last checkpoint and the final save
    (run_dir / "summary.json").write_text(json.dumps({**summary_of(finished_run), "status": "running"}))
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"trainer.max_steps={FINISHED_STEPS}",
                     "resume=auto", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint-{FINISHED_STEPS} is the last step: nothing left to train" in result.stdout + result.stderr
    assert summary_of(run_dir)["status"] == "completed" and summary_of(run_dir)["global_step"] == FINISHED_STEPS
    import torch

    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    final = load_file(finished_run / "adapter" / "adapter_model.safetensors")
    assert saved.keys() == final.keys() and all(torch.equal(saved[k], final[k]) for k in saved)


def test_sigterm_during_set_up_is_one_line_and_143(tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start(home, *LONG, f"hydra.run.dir={run_dir}")
    deadline = time.time() + 60
    while not (run_dir / "summary.json").exists() and time.time() < deadline:  # set-up has begun
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: SIGTERM outside the training loop")
    assert "Traceback" not in stderr
    assert summary_of(run_dir)["status"] == "interrupted"


def test_a_dpo_run_stops_gracefully_and_resume_completes(tmp_path: Path, home: Path) -> None:
    dpo = ("method=dpo", f"data.source={REPO / 'assets' / 'data' / 'tiny_dpo.jsonl'}")
    run_dir = tmp_path / "run"
    stop_with(signal.SIGINT, run_dir, home, *dpo)
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and summary["method"] == "dpo" and 10 <= summary["global_step"] < STEPS
    assert is_complete_checkpoint(run_dir / "checkpoints" / f"checkpoint-{summary['global_step']}")
    result = run_cli("pipeline.train", *LONG, *dpo, "resume=auto", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_of(run_dir)["status"] == "completed" and summary_of(run_dir)["global_step"] == STEPS


@pytest.mark.parametrize("resume", [[], ["resume=auto"]], ids=["new-run", "resume"])
def test_a_folder_of_the_users_files_is_never_made_a_run(resume: list[str], tmp_path: Path, home: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"notes.txt": "my notes\n", "metrics.jsonl": '{"mine": 1}\n'}
    for name, text in files.items():
        (mine / name).write_text(text)
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", *resume, f"hydra.run.dir={mine}",
                     home=home)
    assert result.returncode == 2 and result.stderr.startswith(f"error: hydra.run.dir: {mine} holds files that are "
                                                               "not a run's (metrics.jsonl, notes.txt)")
    # every file as it was, and nothing of a run added
    assert {p.name: p.read_text() for p in mine.iterdir()} == files


def test_a_run_resumes_only_on_the_data_it_started_with(tmp_path: Path, home: Path) -> None:
    import shutil

    source = tmp_path / "data.jsonl"
    shutil.copy(REPO / "assets" / "data" / "tiny_messages.jsonl", source)
    run_dir = tmp_path / "run"
    settings = [*LONG, "trainer.max_steps=12", f"data.source={source}", f"hydra.run.dir={run_dir}"]
    proc = start(home, *settings)
    wait_for_checkpoint(run_dir, 10, proc)
    proc.kill()
    proc.communicate(timeout=60)
    source.write_text(source.read_text().replace("fox", "cat"))  # the data changed since
    result = run_cli("pipeline.train", *settings, "resume=auto", home=home)
    assert result.returncode == 2 and result.stderr.startswith(
        "error: resume: the data changed since this run started"), result.stderr[-3000:]
    assert summary_of(run_dir)["status"] == "running"  # the run is left as it was, to be resumed on its data


def test_a_job_slurm_requeues_by_itself_continues_its_run(tmp_path: Path, home: Path) -> None:
    """SLURM_RESTART_COUNT > 0 (a requeue by SLURM, not through submitit): the same command continues the run."""
    run_dir = tmp_path / "run"
    settings = [*LONG, "trainer.max_steps=12", f"hydra.run.dir={run_dir}"]
    proc = start(home, *settings)
    wait_for_checkpoint(run_dir, 10, proc)
    proc.kill()
    proc.communicate(timeout=60)
    again = run_cli("pipeline.train", *settings, home=home)  # the same command, not requeued: refused
    assert again.returncode == 2 and "already holds a running run" in again.stderr, again.stderr[-2000:]
    requeued = run_cli("pipeline.train", *settings, home=home, SLURM_RESTART_COUNT="1")
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "SLURM started this job again (SLURM_RESTART_COUNT=1): continuing its run as resume=auto" in \
        requeued.stdout + requeued.stderr
    summary = summary_of(run_dir)
    assert summary["status"] == "completed" and int(summary["resumed_from"].rsplit("-", 1)[-1]) == 10


# a scheduler's USR2 handler, as submitit installs it on SLURM: it requeues the job (here: writes a mark) and exits
SCHEDULER = ("import os, runpy, signal, sys\n"
             "def requeue(signum, frame):\n"
             "    open(os.environ['REQUEUED'], 'w').write('requeued')\n"
             "    sys.exit(3)\n"
             "signal.signal(signal.SIGUSR2, requeue)\n"
             "sys.argv = ['train', *sys.argv[1:]]\n"
             "runpy.run_module('pipeline.train', run_name='__main__')\n")


def test_slurm_preemption_saves_a_checkpoint_before_the_scheduler_requeues(tmp_path: Path, home: Path) -> None:
    """USR2 under a scheduler's handler: our graceful stop first (finish the step, checkpoint, summary), then the
    scheduler's own handler (submitit's requeue), which exits; without the chain it would exit at once."""
    run_dir, mark = tmp_path / "run", tmp_path / "requeued"
    overrides = quickstart_eval_off((*LONG, f"hydra.run.dir={run_dir}"))
    proc = subprocess.Popen([sys.executable, "-c", SCHEDULER, *overrides], cwd=REPO,
                            env={**offline_env(home), "REQUEUED": str(mark)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(run_dir, 10, proc)
    proc.send_signal(signal.SIGUSR2)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3 and mark.read_text() == "requeued", stderr[-3000:]  # the scheduler's handler ran
    assert "SIGUSR2: finishing this step, saving a checkpoint, then stopping" in stdout + stderr
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and 10 <= summary["global_step"] < STEPS
    assert is_complete_checkpoint(run_dir / "checkpoints" / f"checkpoint-{summary['global_step']}")


def test_who_starts_the_processes_may_change_on_resume() -> None:
    """A run from before distributed.processes existed (no such key), or one started under torchrun and resumed with
    distributed.processes=2: the same training, so resumable; a changed LoRA rank beside it is still refused."""
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.config.resolved import to_plain_dict
    from pipeline.errors import ConfigError
    from pipeline.train.resume import check_same_training

    saved = to_plain_dict(to_runconfig(compose("experiment=quickstart")))
    del saved["distributed"]["processes"]
    check_same_training(saved, to_plain_dict(to_runconfig(compose("experiment=quickstart", "distributed.processes=2"))))
    with pytest.raises(ConfigError, match=r"lora.r \(16 -> 8\)$|lora.r \(16 -> 8\)\."):
        check_same_training(saved, to_plain_dict(to_runconfig(compose("experiment=quickstart", "lora.r=8",
                                                                      "distributed.processes=2"))))
