"""One fine-tuning run, top to bottom: setup -> train -> save -> report.

Phases are named as in the run's log. Data is checked with the tokenizer before any model weight loads,
target modules are checked against the loaded model, and every file in the run directory is written here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import data as data_lib
from pipeline import targets, tracking
from pipeline.backends import get_backend, loaded_quantization
from pipeline.config import TrainConfig, to_plain_dict
from pipeline.precision import resolve_precision

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    summary: dict
    model: Any       # the trained PEFT model, still in memory
    tokenizer: Any


def load_tokenizer(run: TrainConfig) -> Any:
    """The tokenizer alone (seconds, no weights), with the configured chat template applied."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.model.name, revision=run.model.revision,
                                              trust_remote_code=run.model.trust_remote_code)
    return data_lib.apply_named_chat_template(tokenizer, run.model.chat_template)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total), counting 4-bit packed weights at their real size (PEFT's own count)."""
    return model.get_nb_trainable_parameters()


def print_header(lines: dict[str, Any]) -> None:
    width = max(map(len, lines))
    for key, value in lines.items():
        log.info("%s : %s", key.ljust(width), value)


def finetune(run: TrainConfig, run_dir: Path, ctx: dict[str, Any]) -> FinetuneResult:
    """Train one adapter into `run_dir`; the summary is also written to summary.json."""
    backend = get_backend(run.backend)  # first: the Unsloth backend must patch transformers before it loads
    from transformers import set_seed

    from pipeline import reporting, training

    started = time.time()
    precision = resolve_precision(run.model.dtype)
    preset = ctx.get("choices", {}).get("lora/target_modules", "custom")

    # --- setup -----------------------------------------------------------------------------------------------
    datasets = data_lib.build(run.data, load_tokenizer(run), run.seed)
    set_seed(run.seed)
    model, tokenizer = backend.load(run, precision)
    tokenizer = data_lib.apply_named_chat_template(tokenizer, run.model.chat_template)
    resolution = targets.resolve(run.lora.target_modules, model.config.model_type, preset)
    targets.validate_against_model(resolution, targets.linear_layer_names(model))
    model = backend.apply_lora(model, run, resolution.target_modules)
    trainable, total = count_parameters(model)
    resolution.trainable_params = trainable
    effective_batch = run.trainer.per_device_train_batch_size * run.trainer.gradient_accumulation_steps

    print_header({
        "model": f"{run.model.name} ({model.config.model_type})",
        "backend": run.backend,
        "quantization": f"{loaded_quantization(model)} (asked: {_asked_quantization(run)}), "
                        f"{precision.name} compute on {precision.device}",
        "target modules": f"{resolution.target_modules} ({resolution.adapted_layers} layers, preset {preset})",
        "trainable params": f"{trainable:,} / {total:,} ({100 * trainable / total:.3f}%)",
        "data": f"{len(datasets.train)} train / {len(datasets.eval) if datasets.eval else 0} eval samples "
                f"({datasets.format})",
        "effective batch": f"{effective_batch} = {run.trainer.per_device_train_batch_size} per device x "
                           f"{run.trainer.gradient_accumulation_steps} accumulation",
        "run directory": str(run_dir),
    })
    for note in resolution.notes:
        log.info("note: %s", note)
    if run.backend == "unsloth":
        for blocker in backend.fast_path_blockers(run, _resolved_roles(run.lora.target_modules)):
            log.info("note: Unsloth's fused LoRA fast path is off on GPU: %s", blocker)

    config_dict = to_plain_dict(run)
    reporting.write_resolved_config(run_dir, config_dict)
    metrics = reporting.MetricsFileCallback(run_dir / "metrics.jsonl")
    wandb_run = tracking.start(run, config_dict, run_dir, ctx)
    sft_config = training.build_sft_config(run, precision, run_dir / "checkpoints", datasets,
                                           ["wandb"] if wandb_run is not None else ["none"],
                                           tracking.run_name(run, ctx))
    trainer = training.build_trainer(model, tokenizer, datasets, sft_config, [metrics], precision)

    summary: dict[str, Any] = {
        "status": "failed", "model": run.model.name, "model_type": model.config.model_type,
        "backend": run.backend, "quantization": loaded_quantization(model), "precision": precision.name,
        "device": precision.device, "trainable_params": trainable, "total_params": total,
        "trainable_pct": round(100 * trainable / total, 4), "target_modules": resolution.as_dict(),
        "effective_batch_size": effective_batch, "train_samples": len(datasets.train),
        "eval_samples": len(datasets.eval) if datasets.eval else 0, "data_format": datasets.format,
        "run_dir": str(run_dir),
    }
    # --- train / save ----------------------------------------------------------------------------------------
    try:
        output = trainer.train()
        summary["train_loss"] = output.training_loss
        if datasets.eval is not None:
            summary["eval_loss"] = trainer.evaluate()["eval_loss"]
        trainer.model.save_pretrained(run_dir / "adapter")
        tokenizer.save_pretrained(run_dir / "adapter")
        summary["status"] = "completed"
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    finally:
        # --- report: written whatever happened, so a failed job in a sweep still explains itself -----------
        train_losses = reporting.loss_values(metrics.rows, "loss")
        state = trainer.state
        runtime = time.time() - started
        summary.update({
            "initial_loss": train_losses[0][1] if train_losses else None,
            "final_loss": train_losses[-1][1] if train_losses else None,
            "global_step": state.global_step,
            "runtime_s": round(runtime, 2),
            "tokens_per_second": round(state.num_input_tokens_seen / runtime, 1)
            if state.num_input_tokens_seen else _tokens_per_second(metrics.rows, runtime),
            "peak_memory_mb": round(reporting.peak_memory_mb(precision.device), 1),
            "versions": reporting.versions(),
            "git_sha": reporting.git_sha(),
        })
        reporting.write_summary(run_dir, summary)
        if metrics.rows:
            reporting.plot_loss(run_dir, metrics.rows, tracking.run_name(run, ctx))
        tracking.finish(wandb_run, summary, exit_code=0 if summary["status"] == "completed" else 1)
    print_summary(summary, run_dir)
    return FinetuneResult(summary, trainer.model, tokenizer)


def print_summary(summary: dict, run_dir: Path) -> None:
    eval_loss = f"{summary['eval_loss']:.4f}" if "eval_loss" in summary else "-"
    print_header({
        "status": summary["status"],
        "loss": f"{summary['initial_loss']:.4f} -> {summary['final_loss']:.4f} (eval {eval_loss})",
        "steps": f"{summary['global_step']} in {summary['runtime_s']} s ({summary['tokens_per_second']} tokens/s)",
        "peak memory": f"{summary['peak_memory_mb']:.0f} MB",
        "adapter": str(run_dir / "adapter"),
        "summary": str(run_dir / "summary.json"),
    })


def _tokens_per_second(rows: list[dict], runtime: float) -> float | None:
    """TRL logs a running `num_tokens`; its last value over the wall time."""
    tokens = [r["num_tokens"] for r in rows if "num_tokens" in r]
    return round(tokens[-1] / runtime, 1) if tokens and runtime > 0 else None


def _asked_quantization(run: TrainConfig) -> str:
    return "none" if run.quantization.bits == 16 else f"{run.quantization.bits}-bit"


def _resolved_roles(requested: list[str]) -> set[str]:
    from pipeline.config import ROLES

    return {r for r in requested if r in ROLES}
