"""Submitit launchers (SLURM, local) whose requeued jobs run again with `resume=auto`.

On preemption or at its time limit a submitit job is sent USR2, and the launcher's `checkpoint` says how to requeue
it; the plugin's own requeues it unchanged, which this pipeline refuses (a run directory that holds a run is only
continued with `resume`). Hydra loads launchers only from the `hydra_plugins` namespace, hence this package.
"""

from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # the `slurm` extra is optional; without the guard Hydra would warn on every command
    LocalLauncher = SlurmLauncher = None


def with_resume_auto(overrides: list[str]) -> list[str]:
    """The job's overrides, its `resume` (if any) replaced by `resume=auto`."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"] + ["resume=auto"]


if LocalLauncher is not None:

    class _ResumeOnRequeue:
        def checkpoint(self, overrides: Any, *args: Any, **kwargs: Any) -> Any:
            """submitit's hook on preemption/timeout: the same job again, continuing its own checkpoints."""
            import submitit

            return submitit.helpers.DelayedSubmission(self, with_resume_auto(list(overrides)), *args, **kwargs)

    class ResumingSlurmLauncher(_ResumeOnRequeue, SlurmLauncher):
        pass

    class ResumingLocalLauncher(_ResumeOnRequeue, LocalLauncher):
        pass
