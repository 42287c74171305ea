"""The plan: the configured run and every target-module preset beside it, priced on the model's layout (no weights,
and for a preset's numbers no torch), and whether each fits the common GPUs."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.model import targets
from pipeline.model.skeleton import skeleton_layout
from pipeline.plan import estimate, fit
from pipeline.plan.lengths import PricedLength


def plan(run: Any, presets: dict[str, list[str]], selected: str, architecture_applies: bool = True,
         length: PricedLength | None = None) -> dict:
    """Counts and VRAM for the configured targets (`selected`: its preset name, or custom) and every preset, priced
    at `length` tokens per sample (default: the limit)."""
    limit = estimate.sequence_length(run)
    length = length or PricedLength(limit, "limit", f"{limit} tokens per sample, the limit")
    model = skeleton_layout(run.model, architecture_applies)
    model_type = model.config.model_type
    choices = dict(presets)
    if selected == "custom":
        choices["custom"] = list(run.lora.target_modules)
    results = {}
    for name, requested in choices.items():
        try:
            resolution = targets.validate_against_model(targets.resolve(requested, model_type, name), model)
            if name == selected:
                targets.check_rank_fits(resolution, model, run.lora.r)
        except ConfigError:
            if name == selected:
                raise  # the user's own choice must resolve; other presets may not exist for this model
            continue
        results[name] = estimate.estimate(model, run, resolution.target_modules, resolution.notes,
                                          resolution.target_parameters, seq_len=length.tokens).as_dict()
        results[name]["vram_gib_checkpointing_flipped"] = round(
            estimate.estimate(model, flip_checkpointing(run), resolution.target_modules,
                              target_parameters=resolution.target_parameters, seq_len=length.tokens).vram_gib, 2)
        results[name]["fit"] = fit.fit(results[name]["vram_parts"], run.trainer.per_device_train_batch_size)
    return {"model": run.model.name, "model_type": model_type, "selected": selected,
            "settings": {**settings_of(run), "priced_length": length.tokens, "priced_length_from": length.source,
                         "priced_length_reason": length.reason}, "presets": results}


def flip_checkpointing(run: Any) -> Any:
    """The same run with gradient checkpointing switched the other way (plan shows both)."""
    import dataclasses

    trainer = dataclasses.replace(run.trainer, gradient_checkpointing=not run.trainer.gradient_checkpointing)
    return dataclasses.replace(run, trainer=trainer)


def settings_of(run: Any) -> dict:
    t = run.trainer
    return {"r": run.lora.r, "quantization_bits": run.quantization.bits, "double_quant": run.quantization.double_quant,
            "batch_size": t.per_device_train_batch_size, "max_seq_length": estimate.sequence_length(run),
            "gradient_checkpointing": t.gradient_checkpointing,
            "optimizer": "adamw_8bit" if t.optim == "auto" else t.optim, "method": run.method.name,
            "sequences_per_sample": estimate.method_passes(run)[0]}


def format_table(result: dict) -> str:
    names = {name: ",".join(p["target_modules"]) for name, p in result["presets"].items()}
    width = max(len("targets"), *map(len, names.values()))
    header = f"{'preset':<12} {'targets':<{width}} {'trainable':>13} {'%':>7} {'adapter MB':>10} {'VRAM GiB':>9}"
    lines = [header, "-" * len(header)]
    for name, p in result["presets"].items():
        mark = "*" if name == result["selected"] else " "
        lines.append(f"{mark}{name:<11} {names[name]:<{width}} {p['trainable_params']:>13,} "
                     f"{p['trainable_pct']:>7.3f} {p['adapter_mb']:>10.1f} {p['vram_gib']:>9.2f}")
    return "\n".join(lines)


def format_parts(preset: dict) -> str:
    return "  ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in preset["vram_parts"].items())
