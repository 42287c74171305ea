"""`python -m pipeline.evaluate run=<run dir>` (`ft-evaluate`): held-out loss and answer scores, base vs trained."""

from __future__ import annotations

import json
import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli.common import CONF_DIR, entry, run_after_command

log = logging.getLogger(__name__)


def evaluate_command(after: Any, run: Any) -> dict:
    from pipeline.after.evaluate import describe, evaluate
    from pipeline.outputs import tracking
    from pipeline.outputs.rundir import RunDirectory, write_atomically

    result = evaluate(run, after.eval)
    for line in describe(result):
        log.info("%s", line)
    write_atomically(run.path / "eval.json", json.dumps(result, indent=2) + "\n")
    RunDirectory(run.path).write_summary({**run.summary, "eval": result})
    wandb_run = tracking.resume_for_eval(run.config, run.path, run.summary.get("wandb_run_id"))
    if wandb_run is not None:
        tracking.log_eval(wandb_run, result)
        wandb_run.finish()
    log.info("written to %s, summary.json%s", run.path / "eval.json", " and W&B" if wandb_run is not None else "")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="after")
def main(cfg: DictConfig) -> None:
    run_after_command(cfg, evaluate_command)


cli = entry(main)


if __name__ == "__main__":
    cli()
