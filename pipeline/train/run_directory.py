"""The run directory of a training: opened new, continued with `resume` after the same settings and data are
checked, or refused (a run already there, a folder of the user's files); what summary.json says from the start; and
what a mistake found during set-up removes again."""

from __future__ import annotations

import logging
import os
from typing import Any

from pipeline.config.context import RunContext
from pipeline.config.resolved import to_plain_dict
from pipeline.config.schema import TrainConfig
from pipeline.errors import ConfigError
from pipeline.outputs.rundir import RunDirectory
from pipeline.train import resume as resume_lib

log = logging.getLogger(__name__)


def open_run_directory(run: TrainConfig, context: RunContext) -> tuple[RunDirectory, Any]:
    """Lock the run directory; a directory that holds a run is only continued with `resume`, never overwritten."""
    resume = run.resume or resume_lib.requeued_by_slurm(context.run_dir)
    path = resume_lib.run_directory_of(resume, context.run_dir) if resume else context.run_dir
    run_dir = RunDirectory(path, writes=context.main_process)
    if not run_dir.writes:  # rank 0 checks and writes; the others only need the same resume point
        return run_dir, resume_lib.find_resume_point(resume, run_dir) if resume else None
    run_dir.refuse_foreign_files()  # a folder of the user's own files is never made a run (before the lock file)
    run_dir.lock()
    previous = run_dir.read_summary()
    if resume is None:
        if previous is not None:
            raise ConfigError("hydra.run.dir", f"{path} already holds a {previous.get('status', 'earlier')} run",
                              "continue it with resume=auto, or give this run another hydra.run.dir or name")
        run_dir.write_start(context.hydra_files, to_plain_dict(run))
        return run_dir, None
    saved = path / "config.resolved.yaml"
    if saved.is_file():
        from omegaconf import OmegaConf

        resume_lib.check_same_training(OmegaConf.to_container(OmegaConf.load(saved)), to_plain_dict(run))
    resume_lib.check_same_data(previous or {}, run.data)
    point = resume_lib.find_resume_point(resume, run_dir)
    if (previous or {}).get("status") == "completed":
        return run_dir, point  # nothing is written: the run is reported as it is
    run_dir.write_start(context.hydra_files, to_plain_dict(run))
    log.info("resume: %s", f"from {point.checkpoint} (step {point.step})" if point.checkpoint else
             f"no complete checkpoint in {run_dir.checkpoints}: starting at step 0")
    return run_dir, point


def running_summary(run: TrainConfig, run_dir: RunDirectory) -> dict:
    """What summary.json says from the start: the run is going on, in this process."""
    from pipeline.data.cache import data_fingerprint

    try:
        fingerprint = data_fingerprint(run.data)
    except ConfigError:  # a data file that is not there: said by the data stage, which cleans up after itself
        fingerprint = None
    summary = {"status": "running", "pid": os.getpid(), "model": run.model.name, "backend": run.backend,
               "method": run.method.name, "run_dir": str(run_dir.path), "data_fingerprint": fingerprint}
    run_dir.write_summary(summary)
    return summary


def forget_run(run_dir: RunDirectory) -> None:
    for name in ("summary.json", "config.resolved.yaml", "metrics.jsonl", ".lock"):
        (run_dir.path / name).unlink(missing_ok=True)
