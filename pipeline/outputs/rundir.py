"""The run directory: its layout, a lock while a run uses it, the status file, and atomic writes.

A kill at any moment leaves each file either as it was or complete: files are written to a temporary path and
renamed. A directory that already holds a run is only continued with `resume`, never silently overwritten.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

# what a trainer checkpoint must hold to be resumed from (HF writes them one by one, trainer_state.json late)
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class RunDirectory:
    path: Path
    _lock: Any = field(default=None, repr=False)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def read_summary(self) -> dict | None:
        return json.loads(self.summary_file.read_text()) if self.summary_file.is_file() else None

    def lock(self) -> None:
        """Hold an exclusive lock for this process's lifetime: a second run into the same directory is refused."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / ".lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            holder = (self.read_summary() or {}).get("pid", "another process")
            raise ConfigError("hydra.run.dir", f"{self.path} is in use by a running training (pid {holder})",
                              "wait for it to finish, or give this run another hydra.run.dir") from None
        self._lock = handle

    def write_json(self, name: str, value: Any) -> None:
        write_atomically(self.path / name, json.dumps(value, indent=2, default=str) + "\n")

    def write_summary(self, summary: dict) -> None:
        self.write_json("summary.json", summary)

    def complete_checkpoints(self) -> list[Path]:
        """checkpoint-N folders that hold everything a resume needs, oldest first."""
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return sorted((p for p in found if is_complete_checkpoint(p)), key=lambda p: int(p.name.split("-")[-1]))

    def save_adapter(self, model: Any, tokenizer: Any) -> None:
        """The final adapter and tokenizer, whole or not at all: written beside, then renamed into place."""
        staging, previous = self.path / "adapter.tmp", self.path / "adapter.previous"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if self.adapter.exists():
            shutil.rmtree(previous, ignore_errors=True)
            self.adapter.rename(previous)
        staging.rename(self.adapter)
        shutil.rmtree(previous, ignore_errors=True)


def is_complete_checkpoint(folder: Path) -> bool:
    has_weights = any((folder / name).is_file() for name in ("adapter_model.safetensors", "model.safetensors"))
    return has_weights and all((folder / name).is_file() and (folder / name).stat().st_size > 0
                               for name in CHECKPOINT_FILES)


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_resolved_config(run_dir: Path, config: dict) -> None:
    from omegaconf import OmegaConf

    write_atomically(run_dir / "config.resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
