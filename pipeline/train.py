"""`python -m pipeline.train`: compose the config, validate it, fine-tune, return the objective for sweepers."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline.config import preset_label, register_configs, register_resolvers, to_runconfig
from pipeline.errors import ConfigError, install_hydra_error_handler, report_and_exit

log = logging.getLogger(__name__)
HYDRA_ONLY_FILES = {".hydra", "train.log"}

register_resolvers()
register_configs()


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def remove_if_only_hydra_files(run_dir: Path) -> None:
    """A config error leaves no run directory behind that could pass for a real run."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_ONLY_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from pipeline import tracking

    run_dir = output_dir()
    try:
        run = to_runconfig(cfg)  # every value checked before anything heavy is imported or loaded
        ctx = tracking.hydra_context()
        ctx["preset"] = preset_label(run.lora.target_modules, ctx["choices"].get("lora/target_modules"))
        tracking.check_credentials(run)  # before anything loads
        from pipeline.finetune import finetune

        summary = finetune(run, run_dir, ctx).summary
    except ConfigError as error:
        remove_if_only_hydra_files(run_dir)
        if not tracking.hydra_context().get("multirun"):
            report_and_exit(error)  # one line, exit 2, before Hydra adds its own report
        raise  # in a sweep: Hydra records this job as failed and runs the others
    # Sweepers minimize this: eval loss when there is an eval split, else the last training loss.
    return summary.get("eval_loss", summary.get("final_loss"))


def cli() -> None:
    install_hydra_error_handler()
    try:
        main()
    except KeyboardInterrupt:
        # summary.json already says "interrupted"; checkpoints written so far stay in the run directory
        sys.stderr.write("interrupted: training stopped; see summary.json in the run directory\n")
        sys.exit(130)


if __name__ == "__main__":
    cli()
