"""What every command shares: the config directory, the schema registration, and the one-line error handling."""

from __future__ import annotations

import atexit
import dataclasses
import gc
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.config import register_configs, register_resolvers, to_runconfig
from pipeline.config.context import RunContext, from_hydra
from pipeline.config.launch import is_main_process, single_process_note
from pipeline.config.resolvers import REPO
from pipeline.config.validate import to_afterconfig
from pipeline.errors import (
    EXIT_USAGE,
    FAILED_JOBS,
    ConfigError,
    first_line,
    install_hydra_error_handler,
    report_and_exit,
    to_config_error,
)
from pipeline.model.hub import go_offline_if_unreachable

CONF_DIR = str(REPO / "conf")  # absolute: the commands work from any directory
HYDRA_ONLY_FILES = {".hydra", "train.log", "plan.log", "preprocess.log", "export.log", "generate.log",
                    "evaluate.log"}
DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")
T = TypeVar("T")
log = logging.getLogger(__name__)

register_resolvers()
register_configs()


def remove_if_only_hydra_files(run_dir: Path) -> None:
    """A config error leaves no run directory behind that could pass for a real run (nor an emptied date folder)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_ONLY_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent
        if DATE_FOLDER.fullmatch(parent.name) and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # outputs/<date>/ of conf/train.yaml's hydra.run.dir, made for this run only


def run_command(cfg: DictConfig, work: Callable[[Any, RunContext], T]) -> T:
    """Validate, build the run's context, call `work`; a user mistake becomes one line and exit code 2.

    In a multirun the error is raised instead, so Hydra records that job as failed and runs the others.
    """
    try:
        run = to_runconfig(cfg)  # every value checked before anything heavy is imported or loaded
        context = dataclasses.replace(from_hydra(run), hydra_files=hydra_files(cfg))
        offline = go_offline_if_unreachable(run)  # before huggingface_hub is imported: it reads the variables once
        if offline:
            log.info("note: %s", offline)
            context = dataclasses.replace(context, notes=(*context.notes, offline))
        if single_process_note():  # printed with the header's notes, kept in summary.json
            context = dataclasses.replace(context, notes=(*context.notes, single_process_note()))
        return work(run, context)
    except ConfigError as error:
        run_dir = _hydra_output_dir()
        if run_dir is not None and is_main_process():  # the other processes of a launch leave the directory alone
            remove_if_only_hydra_files(run_dir)
        if _in_multirun():
            raise
        report_and_exit(error)  # one line, exit 2, before Hydra adds its own report
        raise  # not reached: report_and_exit exits


def run_after_command(cfg: DictConfig, work: Callable[[Any, Any], T]) -> T:
    """`run_command` for the commands that work on a finished run (`conf/after.yaml`): `work(after, run)` gets the
    validated config and the finished run, with the libraries' logs and progress bars off the console."""
    from pipeline.after.finished import open_finished_run
    from pipeline.outputs.logs import quiet_progress_bars, route_library_logs

    try:
        after = to_afterconfig(cfg)
        run = open_finished_run(after.run, after.unquantized_base)
        route_library_logs()
        quiet_progress_bars()
        return work(after, run)
    except ConfigError as error:
        run_dir = _hydra_output_dir()
        if run_dir is not None:
            remove_if_only_hydra_files(run_dir)  # `run` named no run: Hydra made the folder for its log
        report_and_exit(error)
        raise


def hydra_files(cfg: DictConfig) -> tuple[tuple[str, str], ...]:
    """What Hydra would have written into .hydra/ before the job ran (conf/train.yaml defers it to the command)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return ()
    hydra = HydraConfig.get()
    return (("config.yaml", OmegaConf.to_yaml(cfg)), ("hydra.yaml", OmegaConf.to_yaml({"hydra": hydra})),
            ("overrides.yaml", OmegaConf.to_yaml(list(hydra.overrides.task))))


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# Hydra's own flags that take a choice (hydra/_internal/utils.py): argparse would print its whole usage for a bad one
HYDRA_FLAG_CHOICES = {("--cfg", "-c"): ("job", "hydra", "all"),
                      ("--info", "-i"): ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")}


def refuse_unknown_hydra_flag_values(argv: list[str]) -> None:
    """`--cfg bogus`, `--info bogus`: one line naming the flag and its choices, exit 2."""
    for position, argument in enumerate(argv[:-1]):
        for flags, choices in HYDRA_FLAG_CHOICES.items():
            value = argv[position + 1]
            optional = flags[0] == "--info" and (value.startswith("-") or "=" in value)  # --info takes no value
            if argument in flags and value not in choices and not optional:
                sys.stderr.write(f"error: {flags[0]}: '{value}' is not one of {', '.join(choices)}. "
                                 f"Give {flags[0]} {choices[0]}, for example.\n")
                sys.exit(EXIT_USAGE)


def entry(main: Callable[[], Any], interrupts: bool = True) -> Callable[[], None]:
    """A console-script entry point around a Hydra main: Hydra's own errors become one line too, and (`interrupts`)
    Ctrl-C one line with exit code 130 (`train` tells its own: it may have saved a checkpoint)."""

    def cli() -> None:
        # the last thing at exit, after every atexit handler (logging, W&B): keep Python's final garbage collection
        # off torch's and transformers' object graph, which otherwise takes seconds of a run's wall time
        atexit.register(gc.freeze)
        install_hydra_error_handler()
        refuse_unknown_hydra_flag_values(sys.argv[1:])
        try:
            main()
        except BrokenPipeError:  # `--help | head`: the reader went away; nothing is left to say, and no traceback
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout once more at exit
            sys.exit(0)
        except KeyboardInterrupt:
            if not interrupts:
                raise
            sys.stderr.write("interrupted: stopped at once; nothing half-written was kept (an export's staging "
                             "folder is removed)\n")
            sys.exit(130)

    return cli


class JobFailures(Callback):
    """Hydra callback: note each failed job of a sweep with its one-line error (listed together at the end)."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.FAILED or not _in_multirun():
            return
        note_failed_job(config.hydra.job.num, job_return)


def note_failed_job(number: int, job_return: Any) -> None:
    """One line for a failed job of the sweep, listed with the others at the end (where Hydra would print the
    first one's traceback)."""
    from pipeline.compat import hydra_job_error, quiet_failed_job

    ex = hydra_job_error(job_return)
    quiet_failed_job(job_return)
    error = to_config_error(ex)
    line = error.line() if error is not None else f"error: {first_line(ex)}"
    FAILED_JOBS.append(f"  job {number} ({' '.join(job_return.overrides)}): {line}")


def note_failed_jobs(returns: Any, first_number: int) -> None:
    """The failed jobs a launcher got back from other processes (submitit), whose own callbacks ran there."""
    from hydra.core.utils import JobStatus

    for offset, job_return in enumerate(returns):
        if job_return.status == JobStatus.FAILED:
            note_failed_job(first_number + offset, job_return)
