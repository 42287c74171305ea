"""Weights & Biases: choose a mode that never prompts or hangs, name and group runs from Hydra's choices."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from pipeline.config.context import RunContext
from pipeline.config.resolved import without_secret_values

log = logging.getLogger(__name__)


def has_wandb_credentials() -> bool:
    """An API key in the environment or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb.Settings(mode=) takes


def check_credentials(run: Any) -> None:
    """logger.mode=online without credentials would stop at W&B's prompt or error, and W&B rejects an unknown
    WANDB_MODE with a traceback: refuse both up front."""
    mode = os.environ.get("WANDB_MODE")
    if run.logger.kind == "wandb" and run.logger.mode == "auto" and mode and mode not in WANDB_MODES:
        from pipeline.errors import ConfigError

        raise ConfigError("WANDB_MODE", f"'{mode}' is not a W&B mode (environment variable)",
                          "set it to online, offline or disabled, or unset it")
    if run.logger.kind == "wandb" and run.logger.mode == "online" and not has_wandb_credentials():
        from pipeline.errors import ConfigError

        raise ConfigError("logger.mode", "online needs W&B credentials and none were found",
                          "set WANDB_API_KEY or run `wandb login`, or use logger.mode=offline")


def choose_mode(configured: str) -> str:
    """`auto`: WANDB_MODE if set, else online with credentials, else offline (sync later with `wandb sync`)."""
    if configured != "auto":
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if has_wandb_credentials():
        return "online"
    log.info("W&B: no credentials found, logging offline to the run directory (upload later with `wandb sync`)")
    return "offline"


def run_name(run: Any, context: RunContext) -> str:
    """`<name or experiment>-<preset>-r<r>`; a sweep's job is named by its number and its overrides instead."""
    base = run.name or context.choices.get("experiment") or context.model_choice or "run"
    if context.multirun:
        return " ".join([f"{base}-job{context.job_num}", *context.overrides])
    return f"{base}-{context.preset}-r{run.lora.r}"


def sweep_group(run: Any, context: RunContext) -> str | None:
    """All jobs of one multirun share a group named after the sweep directory."""
    if run.logger.group:
        return run.logger.group
    return group_of_sweep(context.sweep_dir) if context.multirun and context.sweep_dir else None


def group_of_sweep(sweep_dir: str | Path) -> str:
    return "sweep-" + "-".join(Path(sweep_dir).parts[-2:])  # e.g. sweep-2026-11-24-05-00-00


def start(run: Any, config: dict, run_dir: Path, context: RunContext, run_id: str | None = None) -> Any:
    """Start a W&B run (or nothing for logger=none); returns the run or None. `run_id` continues that run. In a
    launch of several processes, rank 0 alone logs (the trainer's figures are already averaged over the ranks)."""
    if run.logger.kind != "wandb" or not context.main_process:
        return None
    mode = choose_mode(run.logger.mode)
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_LOG_MODEL", "false")  # adapters stay in the run directory, not W&B artifacts
    tags = [t for t in (context.model_choice, context.preset, context.choices.get("quantization"), run.backend)
            if t] + [without_secret_values(str(tag)) for tag in run.logger.tags]
    return init(mode, project=run.logger.project, entity=run.logger.entity,
                name=without_secret_values(run_name(run, context)),
                group=sweep_group(run, context), tags=tags, config=config, dir=str(run_dir),
                reinit="finish_previous", id=run_id, resume="allow" if run_id else None)


def init(mode: str, **kwargs: Any) -> Any:
    """`wandb.init` that never prompts or hangs: online falls back to offline, with one warning line."""
    import wandb

    if mode != "online":
        if mode == "offline":
            quiet_offline_warnings()
        return wandb.init(mode=mode, settings=wandb.Settings(silent=True), **kwargs)
    try:
        # a key with no network: offline within 10 s (W&B waits 30 s by default; its WANDB_INIT_TIMEOUT still rules),
        # nothing is logged yet to lose
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", 10))
        return wandb.init(mode="online", settings=wandb.Settings(silent=True, init_timeout=timeout), **kwargs)
    except Exception as error:  # noqa: BLE001 - no network, bad key, server down: keep going, log offline
        log.warning("W&B: could not go online (%s); logging offline to the run directory instead "
                    "(upload later with `wandb sync`)", str(error).splitlines()[0] if str(error) else error)
        quiet_offline_warnings()
        return wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)


def quiet_offline_warnings() -> None:
    """Offline, W&B warns "URL not available in offline run" each time TRL writes a model card (every checkpoint):
    its warnings go to its debug log in the run directory, not the terminal (W&B's process-wide setting)."""
    import wandb

    wandb.setup(settings=wandb.Settings(show_warnings=False))


def eval_figures(result: dict) -> dict:
    """eval.json as flat W&B summary keys: eval/after/loss, eval/before/exact_match, eval/after/preference_accuracy,
    ..."""
    figures = {}
    for side in ("before", "after"):
        if side in result:
            figures.update({f"eval/{side}/{k}": value for k, value in result[side].items()
                            if isinstance(value, int | float)})  # losses, or a preference run's accuracy and margin
            for key in ("exact_match", "contains", "prompts"):
                if result[side].get("answers"):
                    figures[f"eval/{side}/{key}"] = result[side]["answers"][key]
    return figures


def log_eval(wandb_run: Any, result: dict) -> None:
    """The evaluation into the run's W&B summary, and its answers as a table."""
    if wandb_run is None:
        return
    import wandb

    for key, value in eval_figures(result).items():
        wandb_run.summary[key] = value
    rows = [[side, e["prompt"], e["expected"], e["answer"]] for side in ("before", "after") if side in result
            and result[side].get("answers") for e in result[side]["answers"]["examples"]]
    if rows:
        wandb_run.log({"eval/answers": wandb.Table(columns=["model", "prompt", "expected", "answer"], data=rows)})


def resume_for_eval(config: Any, run_dir: Path, run_id: str | None) -> Any:
    """The training's own W&B run, continued so that `evaluate` adds its figures to it (None without one)."""
    if run_id is None or config.logger.kind != "wandb":
        return None
    mode = choose_mode(config.logger.mode)
    if mode == "disabled":
        return None
    return init(mode, project=config.logger.project, entity=config.logger.entity, dir=str(run_dir), id=run_id,
                resume="allow", reinit="finish_previous")


def finish(wandb_run: Any, summary: dict, exit_code: int = 0) -> None:
    if wandb_run is None:
        return
    for key in ("status", "final_loss", "eval_loss", "trainable_params", "tokens_per_second"):
        if summary.get(key) is not None:
            wandb_run.summary[key] = summary[key]
    for key, value in data_figures(summary).items():
        wandb_run.summary[key] = value
    wandb_run.finish(exit_code=exit_code)


def data_figures(summary: dict) -> dict:
    """Each source's samples and trained tokens (data.sources), how far a stream was read (data.streaming), as flat
    W&B summary keys: data/<source>/in_mix, data/stream/samples, ..."""
    figures = {}
    for name, facts in (summary.get("data_sources") or {}).items():
        for key in ("train_samples", "in_mix", "trained_tokens", "eval_samples"):
            if facts.get(key) is not None:
                figures[f"data/{name}/{key}"] = facts[key]
    for key, value in (summary.get("data_stream") or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            figures[f"data/stream/{key}"] = value
    return figures


def publish_sweep(logger: Any, sweep_dir: Path, columns: tuple[str, ...], rows: list[dict], best: list[str]) -> None:
    """A sweep's summary table and plot as one more run of the sweep's W&B group (job type `sweep-summary`);
    offline, it waits in the sweep directory for `wandb sync`."""
    if logger is None or logger.kind != "wandb":
        return
    mode = choose_mode(logger.mode)
    if mode == "disabled":
        return
    import wandb

    group = logger.group or group_of_sweep(sweep_dir)
    wandb_run = init(mode, project=logger.project, entity=logger.entity, group=group, name=f"{group} summary",
                     job_type="sweep-summary", dir=str(sweep_dir), config={"sweep_dir": str(sweep_dir)},
                     reinit="finish_previous")
    table = wandb.Table(columns=list(columns), data=[[row.get(c) for c in columns] for row in rows],
                        allow_mixed_types=True)
    figures = {"sweep/summary": table}
    if (sweep_dir / "sweep.png").is_file():
        figures["sweep/plot"] = wandb.Image(str(sweep_dir / "sweep.png"))
    wandb_run.log(figures)
    wandb_run.summary["sweep/best"] = best[0]
    wandb_run.finish()
