"""Data-parallel on CPU: `torchrun` with 2 processes (gloo) trains like one process with the same global batch, and
rank 0 alone writes the run directory (DESIGN: Scale-out)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, offline_env

pytestmark = pytest.mark.e2e

STEPS = 4
COMMON = ("experiment=quickstart", "backend=hf", "logger=none", "eval.before_after=false", "data.val_size=0",
          f"trainer.max_steps={STEPS}", "trainer.logging_steps=1", "trainer.gradient_accumulation_steps=2")
# every file of a run directory; rank 1 adds only its rng_state_1.pth to each checkpoint (the trainer's own)
RUN_FILES = {".hydra", ".lock", "adapter", "checkpoints", "config.resolved.yaml", "loss.svg", "metrics.jsonl",
             "summary.json", "train.log"}


def losses(run_dir: Path) -> list[tuple[int, float, float]]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(row["step"], row["epoch"], row["loss"]) for row in rows if "loss" in row]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = offline_env(home, FT_DATA_CACHE=str(tmp_path / "data-cache"))
    one = subprocess.run([sys.executable, "-m", "pipeline.train", *COMMON, "trainer.per_device_train_batch_size=4",
                          f"hydra.run.dir={tmp_path}/one"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    # rank 1 starts a second late: both must still agree on the run directory named after the launch's time
    runs = tmp_path / "two"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--no-python", "sh", "-c", 'sleep "$RANK"; exec "$0" -m pipeline.train "$@"', sys.executable,
                          *COMMON, "trainer.per_device_train_batch_size=2",
                          f"hydra.run.dir={runs}/${{pipeline.launch_time:%H-%M-%S}}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    assert len(list(runs.iterdir())) == 1, list(runs.iterdir())
    run_dir = next(runs.iterdir())
    expected, got = losses(tmp_path / "one"), losses(run_dir)
    # each step once, and as far through the data as one process with batch 4 (each rank took half of each batch)
    assert [(s, e) for s, e, _ in got] == [(s, e) for s, e, _ in expected] and len(got) == STEPS
    assert max(abs(a - b) for (*_, a), (*_, b) in zip(expected, got, strict=True)) < 1e-5, (expected, got)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2 and summary["effective_batch_size"] == 8
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{STEPS}"
    assert {p.name for p in checkpoint.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert two.stdout.count("status      : completed") == 1  # rank 0 alone prints the header and summary
    assert [p.name for p in (tmp_path / "data-cache").iterdir()] != [] and \
        not list((tmp_path / "data-cache").glob("*.tmp"))


def test_a_mistake_under_torchrun_is_said_once(tmp_path: Path) -> None:
    """Every rank finds the same mistake; only the first says it (torchrun adds its own failure report, exit 1)."""
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "pipeline.train", *COMMON, "lora.r=0", f"hydra.run.dir={tmp_path}/run"], cwd=REPO,
                            env=offline_env(home), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith(("error: ", "interrupted: "))]
    # rank 1, stopped by torchrun while it waits for rank 0 to say it, says nothing
    assert ours == ["error: lora.r: 0 is out of range: must be at least 1. Use e.g. lora.r=16 (typical: 8 to 64)."]


def test_the_command_starts_its_own_processes(tmp_path: Path) -> None:
    """`distributed.processes=2`: torch's launcher, started by the command once the config checks out; the run is
    the one torchrun would give, and nothing but the run's own lines reaches the terminal."""
    home = tmp_path / "home"
    home.mkdir()
    run_dir = tmp_path / "run,1 of Bob's"  # reaches the processes as one value, neither a sweep nor a parse error
    result = subprocess.run([sys.executable, "-m", "pipeline.train", *COMMON, "trainer.per_device_train_batch_size=2",
                             "distributed.processes=2", f'hydra.run.dir="{run_dir}"'], cwd=REPO,
                            env=offline_env(home), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2 and summary["effective_batch_size"] == 8
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    assert result.stdout.count("status      : completed") == 1
    assert "Traceback" not in result.stderr and "torch/distributed/elastic" not in result.stderr, result.stderr


def test_processes_that_disagree_with_the_launcher_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "pipeline.train", *COMMON, "distributed.processes=3",
                             f"hydra.run.dir={tmp_path}/run"], cwd=REPO, env=offline_env(home), capture_output=True,
                            text=True, timeout=300)
    ours = [line for line in result.stderr.splitlines() if line.startswith(("error: ", "interrupted: "))]
    assert ours == ["error: distributed.processes: 3, and the launcher started 2. Leave distributed.processes out "
                    "under torchrun or accelerate launch (their count decides)."]
    assert not (tmp_path / "run").exists()


def a_long_launch_training(tmp_path: Path, run_dir: Path) -> subprocess.Popen:
    """`distributed.processes=2` on a long run, returned once its first step is logged (training has begun)."""
    import time

    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", *COMMON[:-3], "trainer.max_steps=5000",
                             "distributed.processes=2", f"hydra.run.dir={run_dir}"], cwd=REPO, env=offline_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.is_file() and metrics.stat().st_size) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    return proc


def test_a_process_killed_mid_run_is_named(tmp_path: Path) -> None:
    """SIGKILL (the out-of-memory killer) takes rank 1 during training: rank 0 loses its peer and says so, the
    command names the killed process; one line each, exit 1, a failed summary."""
    import signal

    import psutil

    run_dir = tmp_path / "run"
    proc = a_long_launch_training(tmp_path, run_dir)
    rank_one = [child for child in psutil.Process(proc.pid).children() if child.environ().get("RANK") == "1"]
    assert len(rank_one) == 1
    rank_one[0].send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)

    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    said = [line for line in stderr.splitlines() if line.startswith(("error: ", "interrupted: "))]
    # rank 0 finds its peer gone at its next step; should the launcher's stop reach it first, it stops gracefully
    assert said[0].startswith("interrupted: ") or re.fullmatch(
        r"error: distributed: another process of this launch stopped \(its connection: connection (reset|closed) by "
        r"peer\)\. Its own output says why; resume=auto continues from the newest complete checkpoint\.", said[0]), said
    assert said[1:] == ["error: distributed.processes: the process of rank 1 was killed by SIGKILL before it could say "
                        "why. Look for the system running out of memory (dmesg), or run fewer processes."], said
    status = json.loads((run_dir / "summary.json").read_text())["status"]
    assert status == ("failed" if said[0].startswith("error: ") else "interrupted")


def test_ctrl_c_stops_the_processes_gracefully(tmp_path: Path) -> None:
    """Ctrl-C reaches the command (its processes run in sessions of their own): it is passed on once, every process
    stops after a checkpoint, rank 0 says so, and the exit code is 130."""
    import signal

    run_dir = tmp_path / "run"
    proc = a_long_launch_training(tmp_path, run_dir)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)

    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    said = [line for line in stderr.splitlines() if line.startswith(("error: ", "interrupted: "))]
    assert said == [f"interrupted: training stopped after a checkpoint; continue it with resume=auto "
                    f"hydra.run.dir={run_dir}"], said
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert list((run_dir / "checkpoints").glob("checkpoint-*/adapter_model.safetensors"))


def test_a_stream_under_two_processes_trains_like_one(tmp_path: Path) -> None:
    """data.streaming under a launch: rank 0 reads and prepares the stream, accelerate deals each global batch out
    (its dispatcher, the default for an IterableDataset), so 2 processes of batch 2 train on the samples of 1 process
    of batch 4, and the stream's position is the same."""
    home = tmp_path / "home"
    home.mkdir()
    stream = ("data.streaming=true", "data.streaming_chunk=20", "trainer.max_steps=6")
    runs = {}
    for name, extra in (("one", ["trainer.per_device_train_batch_size=4"]),
                        ("two", ["trainer.per_device_train_batch_size=2", "distributed.processes=2"])):
        result = subprocess.run([sys.executable, "-m", "pipeline.train", *COMMON[:-3], "trainer.logging_steps=1",
                                 *stream, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=REPO,
                                env=offline_env(home), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (losses(tmp_path / name), json.loads((tmp_path / name / "summary.json").read_text()))
    (expected, one), (got, two) = runs["one"], runs["two"]
    assert [(s, e) for s, e, _ in got] == [(s, e) for s, e, _ in expected] and len(got) == 6
    assert max(abs(a - b) for (*_, a), (*_, b) in zip(expected, got, strict=True)) < 1e-5, (expected, got)
    assert two["processes"] == 2 and two["data_stream"] == one["data_stream"]
    assert two["data_stream"]["samples"] == 6 * 4


def test_a_killed_stream_under_two_processes_resumes_at_its_sample(tmp_path: Path) -> None:
    """Every process killed after a checkpoint (a node lost); resume=auto on the same launch gives the uninterrupted
    launch's adapter bit for bit (rank 0 reads the stream from its saved position; the optimizer state loads onto
    each process's CPU)."""
    import psutil
    import torch
    from safetensors.torch import load_file
    from test_resume import wait_for_checkpoint

    home = tmp_path / "home"
    home.mkdir()
    settings = [sys.executable, "-m", "pipeline.train", *COMMON[:-3], "trainer.logging_steps=1", "data.streaming=true",
                "data.streaming_chunk=20", "trainer.max_steps=40", "trainer.save_steps=8",
                "trainer.per_device_train_batch_size=2", "trainer.save_total_limit=null", "distributed.processes=2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = subprocess.run([*settings, f"hydra.run.dir={whole}"], cwd=REPO, env=offline_env(home),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    proc = subprocess.Popen([*settings, f"hydra.run.dir={killed}"], cwd=REPO, env=offline_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(killed, 8, proc)
    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        process.kill()
    proc.wait(timeout=60)
    result = subprocess.run([*settings, "resume=auto", f"hydra.run.dir={killed}"], cwd=REPO, env=offline_env(home),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] is not None
    assert summary["data_stream"] == json.loads((whole / "summary.json").read_text())["data_stream"]
    expected, got = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (whole, killed))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def failure(rank: int, exitcode: int, at: int) -> object:
    """torch's record of a failed process, seen `at` seconds into the launch."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    recorded = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="<N/A>")
    recorded.timestamp = at
    return recorded


@pytest.mark.parametrize(("failures", "expected"), [
    ({0: (2, 0), 1: (-9, 30)}, 2),        # rank 0's mistake; rank 1, stuck in a collective, killed after 30 s
    ({0: (2, 0), 1: (2, 0)}, 2),          # both found it; rank 0's code
    ({1: (1, 0), 0: (143, 1)}, 1),        # rank 1 failed first; rank 0 stopped by the launcher afterwards
    ({0: (-15, 0)}, 1),                   # stopped by SIGTERM without a word: a failure
    ({1: (-9, 0), 0: (1, 0)}, "rank 1 was killed by SIGKILL"),  # the system killed rank 1; rank 0 lost its peer
    ({1: (-9, 0), 0: (-9, 30)}, "rank 1 was killed by SIGKILL"),  # ... and rank 0 hung until the launcher's SIGKILL
], ids=["mistake", "both", "rank-1-first", "sigterm", "killed", "killed-then-hung"])
def test_the_exit_code_is_the_first_failures(failures: dict, expected: int | str) -> None:
    from pipeline.cli.processes import exit_code
    from pipeline.errors import RunFailed

    recorded = {rank: failure(rank, code, at) for rank, (code, at) in failures.items()}
    if isinstance(expected, int):
        assert exit_code(recorded) == expected
    else:
        with pytest.raises(RunFailed, match=expected):
            exit_code(recorded)


@pytest.mark.parametrize("path", ["/runs/a,b", "/runs/x=y", "/runs/[a]", "/runs/it's", "/runs/back\\slash",
                                  "/runs/end\\", "/runs/a\\'b", "/runs/a b"])
def test_the_run_directory_reaches_the_processes_as_one_value(path: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.cli.processes import quoted

    override = OverridesParser.create().parse_override(f"hydra.run.dir={quoted(path)}")
    assert not override.is_sweep_override() and override.value() == path
