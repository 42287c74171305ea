"""`init_from`: a run that starts from another run's adapter (DPO after SFT, more SFT on new data).

The adapter's base model and LoRA shape are checked against this run's config before any weight loads; its weights
go into the adapter the backend builds, before training. DPO and KTO then score against it, frozen: TRL copies the
adapter as the trainer starts ("ref"), which is the usual SFT-then-DPO recipe's reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
SHAPE = (("r", "lora.r", "r"), ("lora_alpha", "lora.alpha", "alpha"), ("use_rslora", "lora.use_rslora", "use_rslora"),
         ("bias", "lora.bias", "bias"))  # adapter_config.json key, our key, LoraConfig attribute


def adapter_folder(init_from: str) -> Path:
    """The adapter `init_from` names: a run directory's `adapter/`, a checkpoint, or an adapter folder."""
    path = Path(init_from).expanduser()
    folder = path / "adapter" if (path / "adapter").is_dir() else path
    missing = [name for name in (CONFIG, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise ConfigError("init_from", f"{path} holds no adapter ({' and '.join(missing)} missing from {folder})",
                          "point it at a completed run's directory, or at one of its checkpoints")
    return folder


def source_model(folder: Path) -> str | None:
    """The base model the adapter was trained on: its run's model.name, else what PEFT recorded."""
    from omegaconf import OmegaConf

    for resolved in (folder.parent / "config.resolved.yaml", folder.parent.parent / "config.resolved.yaml"):
        if resolved.is_file():
            return str(OmegaConf.select(OmegaConf.load(resolved), "model.name"))
    return _adapter_config(folder).get("base_model_name_or_path")


def _adapter_config(folder: Path) -> dict:
    try:
        return json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError("init_from", f"{folder / CONFIG} is not valid JSON ({error})",
                          "point it at an intact run (or train it again)") from error


def check(run: Any, target_modules: list[str]) -> Path:
    """The adapter folder, once its base and LoRA shape match this run's; else one line naming each key."""
    folder = adapter_folder(run.init_from)
    config = _adapter_config(folder)
    differences = []
    base = source_model(folder)
    if base is not None and Path(base).expanduser().resolve() != Path(run.model.name).expanduser().resolve() \
            and base != run.model.name:
        differences.append(f"model.name={base} there, {run.model.name} here")
    for theirs, key, ours in SHAPE:
        if theirs in config and config[theirs] != getattr(run.lora, ours):
            differences.append(f"{key}={config[theirs]} there, {getattr(run.lora, ours)} here")
    trained = config.get("target_modules")
    trained = sorted([trained] if isinstance(trained, str) else trained or [])
    if trained and trained != sorted(target_modules):
        differences.append(f"lora.target_modules={trained} there, {sorted(target_modules)} here")
    if differences:
        raise ConfigError("init_from", f"its adapter does not fit this run: {'; '.join(differences)}",
                          "set those keys to the adapter's values, or train a new adapter without init_from")
    return folder


def load(model: Any, folder: Path) -> None:
    """The adapter's weights into the new adapter (same shape: checked); weights it has that this one lacks (token
    rows another run trained) are refused by name."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(folder / WEIGHTS))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigError("init_from", f"its adapter holds weights this run's adapter has no place for "
                          f"({unexpected[0]}{' and more' if len(unexpected) > 1 else ''})",
                          "train with the same lora settings and data as that run (its untrained token rows)")


def notes(folder: Path | None, method: str) -> list[str]:
    if folder is None:
        return []
    reference = f" (method={method} scores against it, frozen)" if method in ("dpo", "kto") else ""
    return [f"init_from: training on from the adapter in {folder}{reference}"]
