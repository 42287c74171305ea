"""Submitit launchers (SLURM, local) whose requeued jobs run again with `resume=auto`.

On preemption or at its time limit a submitit job is sent USR2, and the launcher's `checkpoint` says how to requeue
it; the plugin's own requeues it unchanged, which this pipeline refuses (a run directory that holds a run is only
continued with `resume`). Hydra loads launchers only from the `hydra_plugins` namespace, hence this package.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # the `slurm` extra is optional; without the guard Hydra would warn on every command
    LocalLauncher = SlurmLauncher = None


log = logging.getLogger(__name__)


def with_resume_auto(overrides: list[str]) -> list[str]:
    """The job's overrides, its `resume` (if any) replaced by `resume=auto`."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"] + ["resume=auto"]


if LocalLauncher is not None:

    class _ResumeOnRequeue:
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            """The jobs, and one line for each that failed (their callbacks ran in their own processes)."""
            from pipeline.cli.common import note_failed_jobs

            returns = super().launch(job_overrides, initial_job_idx)  # type: ignore[misc]
            note_failed_jobs(returns, initial_job_idx)
            return returns

        def checkpoint(self, overrides: Any, *args: Any, **kwargs: Any) -> Any:
            """submitit's hook on preemption/timeout: the same job again, continuing its own checkpoints."""
            import submitit

            return submitit.helpers.DelayedSubmission(self, with_resume_auto(list(overrides)), *args, **kwargs)

    class ResumingSlurmLauncher(_ResumeOnRequeue, SlurmLauncher):
        pass

    class ResumingLocalLauncher(_ResumeOnRequeue, LocalLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            share_cores(len(job_overrides))
            return super().launch(job_overrides, initial_job_idx)


def share_cores(jobs: int) -> None:
    """Jobs side by side on one machine: torch in each takes every core, and the threads of different jobs spin
    against each other (2 quickstart jobs on 2 cores: 141 s, against 31 s with one thread each). Each job gets its
    share through OMP_NUM_THREADS, unless that is set already."""
    if "OMP_NUM_THREADS" in os.environ or jobs < 2:
        return
    share = max(1, (os.cpu_count() or 1) // jobs)
    os.environ["OMP_NUM_THREADS"] = str(share)  # the jobs' processes inherit it
    log.info("note: %d jobs side by side on %d cores: OMP_NUM_THREADS=%d each (set it to choose)", jobs,
             os.cpu_count() or 1, share)
