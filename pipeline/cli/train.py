"""`python -m pipeline.train` (`ft-train`): compose, validate, run the training recipe; returns the objective."""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli.common import CONF_DIR, entry, remove_if_only_hydra_files, run_command
from pipeline.config.context import RunContext
from pipeline.train import stop


def train(run: Any, context: RunContext) -> float | None:
    from pipeline.cli import processes
    from pipeline.outputs import tracking

    processes.check(run, context)
    tracking.check_credentials(run)  # before anything loads
    if processes.starts_processes(run):  # distributed.processes=N: they train, this one waits
        processes.start(run, context, sys.argv[1:])
        return None
    if not context.multirun:  # this process runs one job: libraries it will not use stay unimported
        from pipeline.compat import hide_from_imports
        from pipeline.train.trainer import unused_libraries

        hide_from_imports(unused_libraries(run, single_job=True))
    from pipeline.train.recipe import RunInterrupted, run_recipe

    try:
        summary = run_recipe(run, context).summary
    except RunInterrupted as interrupted:
        if interrupted.then is not None:  # SLURM preemption under submitit: saved and reported, now its requeue
            import signal

            interrupted.then(signal.SIGUSR2, None)
        raise
    if run.resume not in (None, "auto"):
        remove_if_only_hydra_files(context.run_dir)  # the run went on in the directory `resume` named
    return objective(run, context, summary)


def objective(run: Any, context: RunContext, summary: dict) -> float | None:
    """What sweepers minimize (`objective`): the eval loss (the final train loss without an eval split), or the
    final train loss. A sweep's job with nothing to return fails rather than pass None on to the sweeper."""
    value = summary.get("eval_loss") if run.objective == "eval_loss" else None
    value = summary.get("final_loss") if value is None else value
    if value is None and context.multirun:
        from pipeline.errors import RunFailed

        raise RunFailed("objective", f"the run logged no {run.objective} to return to the sweeper",
                        "log at least once: trainer.logging_steps <= trainer.max_steps")
    return value


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_command(cfg, train)


def refuse_a_folder_of_user_files(argv: list[str]) -> None:
    """hydra.run.dir given on the command line: a folder of the user's own files is refused before Hydra writes its
    job log into it (the recipe checks again, for a run directory set any other way)."""
    from pathlib import Path

    from pipeline.errors import EXIT_USAGE, ConfigError
    from pipeline.outputs.rundir import RunDirectory

    given = [a.split("=", 1)[1].strip("'\"") for a in argv if a.startswith("hydra.run.dir=")]
    if not given or "${" in given[-1] or {"-m", "--multirun"} & set(argv):
        return
    try:
        RunDirectory(Path(given[-1]).expanduser()).refuse_foreign_files()
    except ConfigError as error:
        sys.stderr.write(error.line() + "\n")
        sys.exit(EXIT_USAGE)


def cli() -> None:
    stop.install()  # during training the trainer's graceful stop takes over
    refuse_a_folder_of_user_files(sys.argv[1:])
    try:
        entry(main, interrupts=False)()
    except KeyboardInterrupt as interrupt:
        # RunInterrupted: a graceful stop that saved a checkpoint; a plain one: a second signal, or set-up
        from pipeline.config.launch import is_main_process

        if is_main_process():  # every process of a launch stopped; the first says so
            sys.stderr.write(f"{interrupt}\n" if hasattr(interrupt, "exit_code") else
                             "interrupted: stopped at once; complete checkpoints stay and resume=auto continues\n")
        sys.exit(getattr(interrupt, "exit_code", 130))


if __name__ == "__main__":
    cli()
