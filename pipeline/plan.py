"""`python -m pipeline.plan`: price the configured run, and every target-module preset beside it, without weights.

Same config tree as train. The model is built on the meta device from the preset's architecture numbers (offline),
so nothing is downloaded and no GPU is needed. Writes plan.json into the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline import estimate, targets
from pipeline.config import (
    architecture_applies,
    preset_label,
    preset_roles,
    register_configs,
    register_resolvers,
    to_runconfig,
)
from pipeline.errors import ConfigError, install_hydra_error_handler, report_and_exit

register_resolvers()
register_configs()


def plan(run: Any, choice: str | None, model_choice: str | None = None) -> dict:
    model = estimate.build_meta_model(run.model, architecture_applies(run, model_choice))
    model_type = model.config.model_type
    presets = preset_roles()
    selected = preset_label(run.lora.target_modules, choice)
    choices = dict(presets)
    if selected == "custom":
        choices["custom"] = list(run.lora.target_modules)
    results = {}
    for name, requested in choices.items():
        try:
            resolution = targets.validate_against_model(targets.resolve(requested, model_type, name), model)
        except ConfigError:
            if name == selected:
                raise  # the user's own choice must resolve; other presets may not exist for this model
            continue
        results[name] = estimate.estimate(model, run, resolution.target_modules, resolution.notes,
                                          resolution.target_parameters).as_dict()
        results[name]["vram_gib_checkpointing_flipped"] = round(
            estimate.estimate(model, flip_checkpointing(run), resolution.target_modules,
                              target_parameters=resolution.target_parameters).vram_gib, 2)
    return {"model": run.model.name, "model_type": model_type, "selected": selected,
            "settings": settings_of(run), "presets": results}


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
            "optimizer": "adamw_8bit" if t.optim == "auto" else t.optim}


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


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run = to_runconfig(cfg)
        choices = HydraConfig.get().runtime.choices
        result = plan(run, choices.get("lora/target_modules"), choices.get("model"))
    except ConfigError as error:
        report_and_exit(error)
    s = result["settings"]
    selected = result["presets"][result["selected"]]
    print(f"model {result['model']} ({result['model_type']}), {s['quantization_bits']}-bit base, r={s['r']}, "
          f"batch {s['batch_size']} x {s['max_seq_length']} tokens, gradient checkpointing "
          f"{'on' if s['gradient_checkpointing'] else 'off'}, {s['optimizer']}")
    print(format_table(result))
    print(f"\n* selected: {result['selected']}, {selected['total_params']:,} parameters in all; "
          f"VRAM parts (GiB): {format_parts(selected)}")
    print(f"  with gradient checkpointing {'off' if s['gradient_checkpointing'] else 'on'}: "
          f"{selected['vram_gib_checkpointing_flipped']:.2f} GiB")
    for note in selected["notes"]:
        print(f"note: {note}")
    (run_dir / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"plan written to {run_dir / 'plan.json'}")


def cli() -> None:
    install_hydra_error_handler()
    main()


if __name__ == "__main__":
    cli()
