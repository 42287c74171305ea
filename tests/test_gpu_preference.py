"""The preference methods under the trainers Unsloth generates on a GPU (tests/unsloth_rl_trainers.py rebuilds them
here from its installed rl.py): each trains the tiny model through the CLI, and what the trainer chose itself is
recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, offline_env

pytestmark = pytest.mark.e2e


def test_every_method_trains_under_unsloths_generated_trainers(tmp_path: Path, home: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "unsloth_rl_trainers.py"), str(tmp_path / "compiled"), "-m",
         "experiment=quickstart", "logger=none", "method=dpo,orpo,simpo,kto",
         f"data.source={REPO / 'assets' / 'data' / 'tiny_dpo.jsonl'}", "trainer.max_steps=3",
         "eval.before_after=false", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env=offline_env(home), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for job in range(4)]
    assert [(s["method"], s["trainer"], s["status"]) for s in summaries] == [
        ("dpo", "UnslothDPOTrainer", "completed"), ("orpo", "UnslothORPOTrainer", "completed"),
        ("simpo", "UnslothCPOTrainer", "completed"), ("kto", "UnslothKTOTrainer", "completed")]
    for summary in summaries:
        assert summary["adapter_dtype"] == ["float32"]  # TRL's bf16 cast of quantized adapters is not there
        assert summary["autocast"] == "bf16" and any(  # Unsloth's own choice on a bf16 GPU, said in a note
            note.startswith("the trainer runs bf16 mixed precision instead of none") for note in summary["notes"])
        assert not (sweep / str(summaries.index(summary)) / "adapter" / "ref").exists()
