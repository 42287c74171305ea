"""One fine-tuning run, top to bottom: setup -> train -> save -> report.

Data is tokenized and checked with the tokenizer alone, and target modules against a weightless skeleton of the
model, before any weight loads; every file in the run directory is written here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import data as data_lib
from pipeline import estimate, prepare, targets, tracking
from pipeline.backends import check_options, describe_loaded, get_backend, loaded_quantization
from pipeline.chat_templates import apply_named_chat_template
from pipeline.config import TrainConfig, architecture_applies, to_plain_dict
from pipeline.errors import ConfigError, first_line
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

    with model_load_errors(run.model.name):
        tokenizer = AutoTokenizer.from_pretrained(run.model.name, revision=run.model.revision,
                                                  trust_remote_code=run.model.trust_remote_code)
    return apply_named_chat_template(tokenizer, run.model.chat_template, run.backend)


@contextmanager
def model_load_errors(name: str) -> Iterator[None]:
    """A missing, gated or unreachable model is the user's to fix: one line naming model.name."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise ConfigError("model.name", f"cannot load '{name}': {first_line(error)}",
                          "check the hub id or local path, network access and HF_TOKEN for gated models") from error


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
    precision = resolve_precision(run.model.dtype, run.backend)  # before any weight loads
    check_options(run, precision.device)
    preset = ctx.get("preset", "custom")

    # --- setup -----------------------------------------------------------------------------------------------
    data_tokenizer = load_tokenizer(run)
    built = data_lib.build(run.data, data_tokenizer, run.seed)
    prepared = prepare.prepare(built, data_tokenizer, run)
    # already tokenized and masked: SFTTrainer keeps the labels and skips its own preparation
    datasets = data_lib.Datasets(prepared.train, prepared.eval, built.format, False, False)
    with model_load_errors(run.model.name):
        # no weights: wrong target names fail before loading
        skeleton = estimate.build_meta_model(run.model, architecture_applies(run, ctx.get("choices", {}).get("model")))
    resolution = targets.resolve(run.lora.target_modules, skeleton.config.model_type, preset)
    targets.validate_against_model(resolution, skeleton)
    set_seed(run.seed)
    with model_load_errors(run.model.name):
        model, tokenizer = backend.load(run, precision)
    tokenizer = apply_named_chat_template(tokenizer, run.model.chat_template, run.backend)
    padding_side = tokenizer.padding_side  # Unsloth's GPU trainer sets it to "left" for inference
    loaded = describe_loaded(model)
    targets.validate_against_model(resolution, model)  # and the loaded model agrees
    model = backend.apply_lora(model, run, resolution)
    trainable, total = count_parameters(model)
    resolution.trainable_params = trainable
    effective_batch = run.trainer.per_device_train_batch_size * run.trainer.gradient_accumulation_steps

    print_header({
        "model": f"{run.model.name} ({model.config.model_type})",
        "backend": run.backend,
        "quantization": f"{loaded_quantization(model)} (asked: {_asked_quantization(run)}), "
                        f"{precision.name} compute on {precision.device}",
        "target modules": f"{resolution.target_modules + resolution.target_parameters} "
                          f"({resolution.adapted_layers} layers, preset {preset})",
        "trainable params": f"{trainable:,} / {total:,} ({100 * trainable / total:.3f}%)",
        "data": f"{len(datasets.train)} train / {len(datasets.eval) if datasets.eval else 0} eval samples "
                f"({built.format}{', from cache' if prepared.from_cache else ''})",
        "train tokens": prepare.describe(prepared.stats["train"]),
        "effective batch": f"{effective_batch} = {run.trainer.per_device_train_batch_size} per device x "
                           f"{run.trainer.gradient_accumulation_steps} accumulation",
        "run directory": str(run_dir),
    })
    notes = [*precision.notes, *resolution.notes, *loaded_from_notes(run, loaded)]
    for note in notes:
        log.info("note: %s", note)
    if run.backend == "unsloth":
        roles = targets.covered_roles(resolution, skeleton.config.model_type)
        for blocker in backend.fast_path_blockers(run, roles):
            notes.append(f"Unsloth's fused LoRA fast path is off on GPU: {blocker}")
            log.info("note: %s", notes[-1])

    summary: dict[str, Any] = {
        "status": "failed", "model": run.model.name, "model_type": model.config.model_type,
        "backend": run.backend, "quantization": loaded_quantization(model), "precision": precision.name,
        "autocast": precision.autocast, "device": precision.device, "loaded": loaded,
        "trainable_params": trainable, "total_params": total,
        "trainable_pct": round(100 * trainable / total, 4), "target_modules": resolution.as_dict(),
        "effective_batch_size": effective_batch, "train_samples": len(datasets.train),
        "eval_samples": len(datasets.eval) if datasets.eval else 0, "data_format": built.format,
        "data_stats": prepared.stats_dict(),
        "run_dir": str(run_dir), "notes": notes,
    }
    config_dict = to_plain_dict(run)
    reporting.write_resolved_config(run_dir, config_dict)
    metrics = reporting.MetricsFileCallback(run_dir / "metrics.jsonl")
    wandb_run, trainer = None, None
    # --- train / save: the report below is written whatever happens, so a failed sweep job explains itself ----
    try:
        wandb_run = tracking.start(run, config_dict, run_dir, ctx)
        asked = training.sft_config_kwargs(run, precision, run_dir / "checkpoints", datasets,
                                           ["wandb"] if wandb_run is not None else ["none"],
                                           tracking.run_name(run, ctx))
        reference = training.reference_settings(asked)
        sft_config = training.build_sft_config(asked)
        trainer = training.build_trainer(model, tokenizer, datasets, sft_config, [metrics], precision, run.backend)
        for note in training.changed_by_backend(reference, trainer):
            notes.append(note)
            log.info("note: %s", note)
        summary["autocast"] = training.autocast_in_effect(trainer)  # what runs, whatever the backend changed
        summary["adapter_dtype"] = training.trainable_dtypes(trainer.model)
        summary["trainer_settings"] = training.settings_in_effect(trainer)
        with stop_on_sigterm():
            output = trainer.train()
        summary["train_loss"] = output.training_loss
        if datasets.eval is not None:
            summary["eval_loss"] = final_eval_loss(trainer, metrics.rows)
        tokenizer.padding_side = padding_side  # the tokenizer is saved as it was loaded, whatever the trainer set
        trainer.model.save_pretrained(run_dir / "adapter")
        tokenizer.save_pretrained(run_dir / "adapter")
        summary["status"] = "completed"
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    finally:
        runtime = time.time() - started
        summary.update(training_facts(trainer, metrics.rows, runtime, precision.device))
        reporting.write_summary(run_dir, summary)
        if metrics.rows:
            reporting.plot_loss(run_dir, metrics.rows, tracking.run_name(run, ctx))
        tracking.finish(wandb_run, summary, exit_code=0 if summary["status"] == "completed" else 1)
    print_summary(summary, run_dir)
    return FinetuneResult(summary, trainer.model, tokenizer)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (kill, SLURM preemption) ends training like Ctrl-C: the run is reported as interrupted."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def final_eval_loss(trainer: Any, rows: list[dict]) -> float:
    """The eval loss at the last step: reuse the trainer's own evaluation when it just ran one."""
    last = [r for r in rows if "eval_loss" in r]
    if last and last[-1]["step"] == trainer.state.global_step:
        return last[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def training_facts(trainer: Any, rows: list[dict], runtime: float, device: str) -> dict:
    from pipeline import reporting

    losses = reporting.loss_values(rows, "loss")
    state = trainer.state if trainer is not None else None
    seen = state.num_input_tokens_seen if state is not None else 0
    return {
        "initial_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "global_step": state.global_step if state is not None else 0,
        "runtime_s": round(runtime, 2),
        "tokens_per_second": round(seen / runtime, 1) if seen else _tokens_per_second(rows, runtime),
        "peak_memory_mb": round(reporting.peak_memory_mb(device), 1),
        "versions": reporting.versions(),
        "git_sha": reporting.git_sha(),
    }


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(summary: dict, run_dir: Path) -> None:
    print_header({
        "status": summary["status"],
        "loss": f"{_loss(summary['initial_loss'])} -> {_loss(summary['final_loss'])} "
                f"(eval {_loss(summary.get('eval_loss'))})",
        "steps": f"{summary['global_step']} in {summary['runtime_s']} s ({summary['tokens_per_second']} tokens/s)",
        "peak memory": f"{summary['peak_memory_mb']:.0f} MB",
        "adapter": str(run_dir / "adapter"),
        "summary": str(run_dir / "summary.json"),
    })


def _tokens_per_second(rows: list[dict], runtime: float) -> float | None:
    """TRL logs a running `num_tokens`; its last value over the wall time."""
    tokens = [r["num_tokens"] for r in rows if "num_tokens" in r]
    return round(tokens[-1] / runtime, 1) if tokens and runtime > 0 else None


def loaded_from_notes(run: TrainConfig, loaded: dict) -> list[str]:
    """A line when the weights came from another repo than model.name (Unsloth's pre-quantized copies)."""
    repo = loaded.get("repo")
    if not repo or repo == run.model.name or Path(repo).resolve() == Path(run.model.name).resolve():
        return []
    return [f"model.name={run.model.name} was loaded from {repo} (Unsloth's pre-quantized copy: its own "
            "quantization applies, some layers may stay 16-bit); set model.revision or quantization.* to load "
            "the repo itself"]


def _asked_quantization(run: TrainConfig) -> str:
    return "none" if run.quantization.bits == 16 else f"{run.quantization.bits}-bit"
