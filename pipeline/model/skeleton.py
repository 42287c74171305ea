"""The model's architecture without weights: names and shapes before any download or load.

From a local model's config.json, else the preset's architecture numbers (offline), else the hub's config.json.
Built on the meta device, or, for a preset whose numbers pipeline/model/layout.py writes out, not built at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, did_you_mean, first_line


def model_config(model_cfg: Any, use_architecture: bool = True) -> Any:
    """transformers config: a local model's config.json, else the preset's architecture numbers (offline; only
    while model.name is still the preset's), else the hub's config.json."""
    from transformers import AutoConfig

    if (Path(model_cfg.name) / "config.json").is_file():
        return AutoConfig.from_pretrained(model_cfg.name, trust_remote_code=model_cfg.trust_remote_code)
    if model_cfg.architecture and use_architecture:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        arch = dict(model_cfg.architecture)
        model_type = arch.pop("model_type", None)
        if model_type not in CONFIG_MAPPING_NAMES:
            raise ConfigError("model.architecture.model_type", f"unknown model type {model_type!r}",
                              did_you_mean(str(model_type), CONFIG_MAPPING_NAMES) if model_type else
                              "set it to a transformers model type, e.g. llama")
        try:
            return AutoConfig.for_model(model_type, **arch)
        except (ValueError, TypeError) as error:
            raise ConfigError("model.architecture", f"not a valid {model_type} config: {first_line(error)}",
                              "check the architecture numbers against the model's config.json") from error
    try:
        return AutoConfig.from_pretrained(model_cfg.name, revision=model_cfg.revision,
                                          trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as error:
        raise ConfigError("model.name", f"no config.json for '{model_cfg.name}' ({first_line(error)})",
                          "check the name and network access, or use a model preset that carries its "
                          "architecture numbers") from error


def build_meta_model(model_cfg: Any, use_architecture: bool = True) -> Any:
    """The architecture with no weights (meta device): counts and names without a download."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(model_cfg, use_architecture)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def skeleton_layout(model_cfg: Any, use_architecture: bool = True) -> Any:
    """The model's layout (pipeline/model/layout.py): written out from the preset's numbers where it can be, with
    no torch or transformers import, else read from the meta-device model."""
    from pipeline.model.layout import from_architecture, layout_of

    local = (Path(model_cfg.name) / "config.json").is_file()  # a local config.json wins, as in model_config
    if model_cfg.architecture and use_architecture and not local:
        written = from_architecture(model_cfg.architecture)
        if written is not None:
            return written
    return layout_of(build_meta_model(model_cfg, use_architecture))
