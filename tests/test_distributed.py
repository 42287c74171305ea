"""Data-parallel on CPU: `torchrun` with 2 processes (gloo) trains like one process with the same global batch, and
rank 0 alone writes the run directory (DESIGN: Scale-out)."""

from __future__ import annotations

import json
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
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert ours == ["error: lora.r: 0 is out of range: must be at least 1. Use e.g. lora.r=16 (typical: 8 to 64)."]
