"""Nothing silently wrong: a NaN never ends as a completed adapter; settings this machine cannot run are replaced,
said in one line and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose, run_cli

from pipeline.config import to_runconfig

pytestmark = pytest.mark.e2e


def test_a_nan_loss_fails_the_run_and_saves_no_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import TrainerCallback

    from pipeline.config.context import RunContext
    from pipeline.errors import RunFailed
    from pipeline.train import trainer as trainer_lib
    from pipeline.train.recipe import run_recipe

    class PoisonAdapter(TrainerCallback):
        """From step 3 on one adapter weight is NaN: the forward pass really produces a NaN loss."""

        def on_step_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN003
            if state.global_step == 3:
                next(p for p in model.parameters() if p.requires_grad).data.fill_(float("nan"))

    build = trainer_lib.build_trainer

    def build_poisoned(*args, **kwargs):  # noqa: ANN002, ANN003
        trainer = build(*args, **kwargs)
        trainer.add_callback(PoisonAdapter())
        return trainer

    monkeypatch.setattr(trainer_lib, "build_trainer", build_poisoned)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = to_runconfig(compose("experiment=quickstart", "backend=hf", "logger=none", "trainer.max_steps=12",
                               "trainer.save_steps=2", "trainer.logging_steps=1", "data.val_size=0"))
    with pytest.raises(RunFailed, match=r"^error: training: loss became nan at step 4; no adapter was saved"):
        run_recipe(run, RunContext(run_dir=tmp_path, preset="all_linear"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "became nan at step 4" in summary["error"]
    assert not (tmp_path / "adapter").exists()
    saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert saved and max(saved) < 4  # nothing from the broken step on was kept as a resume point


def test_settings_this_machine_cannot_run_are_replaced_and_said(tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", "trainer.max_steps=6",
                     "model.dtype=float16", "trainer.optim=adamw_8bit", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["precision"] == "float32"
    assert summary["final_loss"] == summary["final_loss"]  # finite: the fp16-on-CPU NaN no longer happens
    assert [n.split(":")[0] for n in summary["notes"][:2]] == ["model.dtype=float16", "trainer.optim=adamw_8bit"]
    assert "note: model.dtype=float16: a CPU has no fp16 mixed precision" in result.stdout + result.stderr
