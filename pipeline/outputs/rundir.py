"""The run directory: its layout, a lock while a run uses it, the status file, and atomic writes.

A kill at any moment leaves each file either as it was or complete: files are written to a temporary path and
renamed. A directory that already holds a run is only continued with `resume`, never silently overwritten. In a
launch of several processes only rank 0 writes here (`writes`); the trainer adds each rank's rng_state_<rank>.pth to
a checkpoint itself.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, RunFailed

# what a trainer checkpoint must hold to be resumed from (HF writes them one by one, trainer_state.json late)
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "training_args.bin")
RNG_STATE_FILES = ("rng_state.pth", "rng_state_0.pth")  # one process | rank 0 of several
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
# a write refused by the filesystem: full, over quota, file too large, read-only, not permitted
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
LOW_SPACE = 16 * 2**20  # below this, any failed write is taken for a full disk (torch.save hides the errno)
log = logging.getLogger(__name__)


HYDRA_OWN = (".hydra", ".lock")  # what Hydra and an earlier refused start may have left in a run's folder


@dataclass
class RunDirectory:
    path: Path
    writes: bool = True  # False in the processes of a launch other than rank 0: every write below does nothing
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
        """summary.json, or None; a damaged one (cut short by a crash elsewhere, edited) is named in one line."""
        if not self.summary_file.is_file():
            return None
        try:
            summary = json.loads(self.summary_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            summary = error
        if not isinstance(summary, dict):
            raise ConfigError("hydra.run.dir", f"{self.summary_file} is damaged (not a JSON object of a run's "
                              "summary)", "restore it from a copy, or give this run another hydra.run.dir")
        return summary

    def refuse_foreign_files(self) -> None:
        """A folder that holds files and no run (no summary.json, no checkpoints/) is the user's: refused, so that
        none of its files is replaced (a metrics.jsonl, a notes.txt). Hydra's own job log may be there already."""
        if not self.path.is_dir() or (self.path / "summary.json").exists() or self.checkpoints.is_dir():
            return
        foreign = sorted(f.name for f in self.path.iterdir() if f.name not in HYDRA_OWN and not f.name.endswith(".log"))
        if foreign:
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise ConfigError("hydra.run.dir", f"{self.path} holds files that are not a run's ({shown})",
                              "give a new or empty folder, or hydra.run.dir of a run to continue with resume=auto")

    def lock(self) -> None:
        """Hold an exclusive lock for this process's lifetime: a second run into the same directory is refused."""
        if not self.writes:
            return
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

    def write_summary(self, summary: dict) -> None:
        """Atomically; on a full disk, in place (the old summary's space is reused) rather than not at all."""
        if not self.writes:
            return
        text = json.dumps(summary, indent=2, default=str) + "\n"
        try:
            write_atomically(self.summary_file, text)
        except OSError:
            self.summary_file.write_text(text)

    def write_fault(self, error: BaseException) -> RunFailed | None:
        """The failure, told in one line, when it is the run directory refusing a write; None otherwise."""
        reason = None
        for cause in _chain(error):
            inside = not getattr(cause, "filename", None) or str(cause.filename).startswith(str(self.path))
            if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS and inside:
                reason = cause.strerror
                break
        free = shutil.disk_usage(self.path).free
        if reason is None and free >= LOW_SPACE:
            return None
        return RunFailed("hydra.run.dir", f"cannot write to {self.path}: {reason or 'no space left on device'} "
                         f"({free // 1024} KiB free)", "free space or point hydra.run.dir at another disk; "
                         "resume=auto continues from the last complete checkpoint")

    def write_start(self, hydra_files: tuple[tuple[str, str], ...], config: dict) -> None:
        """Hydra's record and the resolved config; on a disk that refuses them, nothing of the run is left and the
        failure is one line (a full disk, a read-only one)."""
        try:
            write_hydra_files(self.path, hydra_files)
            write_resolved_config(self.path, config)
        except OSError as error:
            fault = self.write_fault(error)
            if fault is None:
                raise
            shutil.rmtree(self.path / ".hydra", ignore_errors=True)
            for written in (self.path / "config.resolved.yaml", self.path / ".lock", *self.path.glob("*.tmp")):
                written.unlink(missing_ok=True)
            raise fault from error

    def remove_partial_writes(self) -> None:
        """What a failed write left half done (an incomplete checkpoint, temporary files): never a result, and on a
        full disk its space is what the summary needs."""
        if not self.writes:
            return
        for folder in self.checkpoints.glob("checkpoint-*"):
            if not is_complete_checkpoint(folder):
                shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(self.path / "adapter.tmp", ignore_errors=True)
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def complete_checkpoints(self) -> list[Path]:
        """checkpoint-N folders that hold everything a resume needs, oldest first."""
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return sorted((p for p in found if is_complete_checkpoint(p)), key=lambda p: int(p.name.split("-")[-1]))

    def save_adapter(self, model: Any, tokenizer: Any, extra_files: dict[str, str] | None = None) -> None:
        """The final adapter, tokenizer and `extra_files`, whole or not at all: written beside, then renamed."""
        if not self.writes:
            return
        staging, previous = self.path / "adapter.tmp", self.path / "adapter.previous"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, selected_adapters=["default"])  # not the frozen "ref" copy DPO and KTO add
        tokenizer.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        if self.adapter.exists():
            shutil.rmtree(previous, ignore_errors=True)
            self.adapter.rename(previous)
        staging.rename(self.adapter)
        shutil.rmtree(previous, ignore_errors=True)


def is_complete_checkpoint(folder: Path) -> bool:
    has_weights = any((folder / name).is_file() for name in ("adapter_model.safetensors", "model.safetensors"))
    def whole(name: str) -> bool:
        return (folder / name).is_file() and (folder / name).stat().st_size > 0

    return has_weights and all(whole(name) for name in CHECKPOINT_FILES) and any(map(whole, RNG_STATE_FILES))


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path` (no `.tmp` is left
    behind when the write fails)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # the pid: jobs of a sweep in parallel write its summary
    try:
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _chain(error: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def write_hydra_files(run_dir: Path, files: tuple[tuple[str, str], ...]) -> None:
    """Hydra's record of the invocation (.hydra/config.yaml, hydra.yaml, overrides.yaml)."""
    if files:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    from pipeline.config.resolved import without_secret_values

    for name, text in files:
        write_atomically(run_dir / ".hydra" / name, without_secret_values(text))


def write_resolved_config(run_dir: Path, config: dict) -> None:
    from omegaconf import OmegaConf

    write_atomically(run_dir / "config.resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
