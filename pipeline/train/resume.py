"""Resume: where a run continues from, and whether the config may continue it.

`resume=auto` continues the run in `hydra.run.dir` from its newest complete checkpoint; `resume=<dir>` continues
the run directory (or the `checkpoint-N` folder) given. A change to what is being trained (model, quantization,
LoRA shape and targets, data, optimisation) is refused; cadence and logging may change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.outputs.rundir import RunDirectory, is_complete_checkpoint

# keys a resumed run may change: how often it logs, evaluates and saves, how long it goes on, where it logs, the
# evaluation after training (it reads the saved adapter, never the training), and who starts the processes (the
# command itself or torchrun: the same processes; runs from before distributed.processes existed have none)
SAFE_TO_CHANGE = ("trainer.max_steps", "trainer.num_train_epochs", "trainer.save_steps", "trainer.eval_steps",
                  "trainer.logging_steps", "trainer.save_total_limit", "trainer.per_device_eval_batch_size",
                  "logger.", "eval.", "name", "resume", "objective", "data.cache", "data.preview_samples",
                  "distributed.processes")


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path           # the run directory being continued
    checkpoint: Path | None  # None: nothing saved yet, the run starts from step 0
    step: int


def run_directory_of(resume: str, hydra_run_dir: Path) -> Path:
    """The run directory `resume` names: `auto` is Hydra's; a checkpoint-N folder belongs to its run's."""
    if resume == "auto":
        return hydra_run_dir
    path = Path(resume).expanduser().resolve()
    if path.name.startswith("checkpoint-") and path.parent.name == "checkpoints":
        return path.parent.parent
    if not (path / "summary.json").is_file() and not (path / "checkpoints").is_dir():
        raise ConfigError("resume", f"{resume} is not a run directory (no summary.json or checkpoints/ in it)",
                          "give resume=auto with hydra.run.dir=<run dir>, or the path of a run directory")
    return path


def find_resume_point(resume: str, run_dir: RunDirectory) -> ResumePoint:
    """The newest complete checkpoint (incomplete checkpoint-N folders are skipped), or the exact one given."""
    path = Path(resume).expanduser().resolve() if resume != "auto" else None
    if path is not None and path.name.startswith("checkpoint-"):
        if not is_complete_checkpoint(path):
            raise ConfigError("resume", f"{path} is not a complete checkpoint", "give resume=auto to use the "
                              "newest complete one, or another checkpoint-N")
        return ResumePoint(run_dir.path, path, int(path.name.split("-")[-1]))
    complete = run_dir.complete_checkpoints()
    if not complete:
        return ResumePoint(run_dir.path, None, 0)
    return ResumePoint(run_dir.path, complete[-1], int(complete[-1].name.split("-")[-1]))


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def check_same_training(saved: dict, current: dict) -> None:
    """Refuse to continue a run under a config that trains something else; name every key that differs."""
    before, after = flatten(saved), flatten(current)
    changed = sorted(key for key in before.keys() | after.keys()
                     if before.get(key) != after.get(key) and not key.startswith(SAFE_TO_CHANGE))
    if changed:
        details = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed)
        raise ConfigError("resume", f"the config differs from the run's in {details}",
                          "resume with the run's values (only max_steps, save/eval/logging cadence, the logger "
                          "and eval.* may change), or start a new run")


def check_same_data(previous: dict, data: Any) -> None:
    """A run continues on the data it started with: files whose content changed since (another size, other bytes
    at their ends) are refused like a changed setting."""
    from pipeline.data.cache import data_fingerprint

    started = previous.get("data_fingerprint")
    if started is not None and started != data_fingerprint(data):
        raise ConfigError("resume", "the data changed since this run started (its files are not the ones it trained "
                          "on)", "resume with the data it started with, or start a new run on the new data")


def requeued_by_slurm(run_dir: Path) -> str | None:
    """`auto` when SLURM started this job again by itself (`SLURM_RESTART_COUNT` > 0: a node failure or a
    preemption with --requeue, not through submitit) and its run directory holds the run: it continues, as
    `resume=auto` would."""
    import logging
    import os

    count = os.environ.get("SLURM_RESTART_COUNT", "")
    if not count.isdigit() or int(count) == 0 or not (run_dir / "summary.json").is_file():
        return None
    logging.getLogger(__name__).info("resume: SLURM started this job again (SLURM_RESTART_COUNT=%s): continuing "
                                     "its run as resume=auto", count)
    return "auto"
