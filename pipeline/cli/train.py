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
    from pipeline.outputs import tracking

    tracking.check_credentials(run)  # before anything loads
    from pipeline.train.recipe import run_recipe

    summary = run_recipe(run, context).summary
    if run.resume not in (None, "auto"):
        remove_if_only_hydra_files(context.run_dir)  # the run went on in the directory `resume` named
    # Sweepers minimize this: eval loss when there is an eval split, else the last training loss.
    return summary.get("eval_loss", summary.get("final_loss"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_command(cfg, train)


def cli() -> None:
    stop.install()  # during training the trainer's graceful stop takes over
    try:
        entry(main)()
    except KeyboardInterrupt as interrupt:
        # RunInterrupted: a graceful stop that saved a checkpoint; a plain one: a second signal, or set-up
        sys.stderr.write(f"{interrupt}\n" if hasattr(interrupt, "exit_code") else
                         "interrupted: stopped at once; complete checkpoints stay and resume=auto continues\n")
        sys.exit(getattr(interrupt, "exit_code", 130))


if __name__ == "__main__":
    cli()
