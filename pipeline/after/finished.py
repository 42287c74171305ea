"""A finished run, read back from its directory: its config as it trained, its summary, its adapter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class FinishedRun:
    path: Path
    config: Any          # TrainConfig, as config.resolved.yaml recorded it
    summary: dict

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"


def open_finished_run(run: str | None) -> FinishedRun:
    """The completed run in `run`; one line naming `run` when it is not one."""
    if not run:
        raise ConfigError("run", "no run directory given", "give run=<run dir>, e.g. run=outputs/<date>/<time>_<name>")
    path = Path(run).expanduser().resolve()
    summary_file, config_file = path / "summary.json", path / "config.resolved.yaml"
    if not summary_file.is_file() or not config_file.is_file():
        raise ConfigError("run", f"{run} is not a run directory (no summary.json and config.resolved.yaml)",
                          "give the directory a train run wrote")
    summary = json.loads(summary_file.read_text())
    if summary.get("status") != "completed" or not (path / "adapter" / "adapter_config.json").is_file():
        raise ConfigError("run", f"{run} holds no completed run (status: {summary.get('status')}) and no final "
                          "adapter", "finish it first (resume=auto), or give a completed run")
    return FinishedRun(path, _train_config(config_file), summary)


def _train_config(config_file: Path) -> Any:
    from omegaconf import OmegaConf

    from pipeline.config.schema import TrainConfig

    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(config_file))
    return OmegaConf.to_object(merged)
