"""Target-module presets: roles in Llama vocabulary (q,k,v,o,gate,up,down) -> this architecture's module names.

A preset names roles. Each architecture family maps roles to the module names PEFT matches (a leaf name, or
`parent.leaf` where the leaf alone is ambiguous, as GPT-2's `c_proj`). A fused module (Phi-3's `qkv_proj`)
carries several roles; asking for part of it adapts all of it, and the resolution says so.
Anything in `lora.target_modules` that is not a role is a literal module name, used as written.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.schema import ROLES
from pipeline.errors import ConfigError
from pipeline.model.layout import layout_of

LLAMA_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
               "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}

# model_type -> role -> module name (None: the architecture has no such layer)
FAMILIES: dict[str, dict[str, str | None]] = {
    "llama": LLAMA_NAMES,
    "phi3": {"q": "qkv_proj", "k": "qkv_proj", "v": "qkv_proj", "o": "o_proj",
             "gate": "gate_up_proj", "up": "gate_up_proj", "down": "down_proj"},
    "gpt2": {"q": "c_attn", "k": "c_attn", "v": "c_attn", "o": "attn.c_proj",
             "gate": None, "up": "mlp.c_fc", "down": "mlp.c_proj"},
    "gpt_neox": {"q": "query_key_value", "k": "query_key_value", "v": "query_key_value", "o": "dense",
                 "gate": None, "up": "dense_h_to_4h", "down": "dense_4h_to_h"},
    "opt": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "gate": None, "up": "fc1", "down": "fc2"},
    # transformers 5 fuses MoE experts into 3-D parameters: adapted through PEFT's target_parameters
    "moe": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "mlp.experts.gate_up_proj",
            "up": "mlp.experts.gate_up_proj", "down": "mlp.experts.down_proj"},
}
EXPERT_PARAMETERS = {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}
ALIASES = {
    **{t: "llama" for t in ("mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo",
                            "olmo2", "cohere")},
    "mixtral": "moe", "qwen3_moe": "moe", "falcon": "gpt_neox", "bloom": "gpt_neox",
}


def family_of(model_type: str) -> dict[str, str | None] | None:
    """The role table for a transformers `model_type`, or None when we have no table for it."""
    return FAMILIES.get(ALIASES.get(model_type, model_type))


@dataclass
class Resolution:
    """What a target-module choice became for one model."""
    preset: str
    requested: list[str]
    target_modules: list[str]
    target_parameters: list[str] = field(default_factory=list)   # fused MoE expert weights (3-D parameters)
    notes: list[str] = field(default_factory=list)
    adapted_layers: int = 0
    trainable_params: int = 0
    trainable_token_indices: dict[str, list[int]] = field(default_factory=dict)  # untrained rows to train, by module

    def as_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "requested": self.requested, "target_modules": self.target_modules,
                "target_parameters": self.target_parameters, "notes": self.notes, "adapted_layers": self.adapted_layers,
                "trainable_params": self.trainable_params, "trainable_token_indices": self.trainable_token_indices}


def resolve(requested: Iterable[str], model_type: str, preset: str = "custom") -> Resolution:
    """Map roles to module names for `model_type`; literal names pass through unchanged."""
    requested = list(requested)
    if any(name.rsplit(".", 1)[-1] == "lm_head" for name in requested):
        raise ConfigError("lora.target_modules", "'lm_head' is the output layer: Unsloth leaves it out of LoRA and "
                          "TRL's chunked loss cannot read it through an adapter",
                          "train it in full with lora.modules_to_save=[lm_head], or leave it out")
    table = family_of(model_type)
    names: list[str] = []
    notes: list[str] = []
    roles = [r for r in requested if r in ROLES]
    if roles and table is None:
        raise ConfigError("lora.target_modules",
                          f"roles {roles} cannot be resolved for model_type '{model_type}' (no table for it)",
                          "list the module names literally, e.g. lora.target_modules=[q_proj,v_proj]")
    for item in requested:
        name = table[item] if item in ROLES else item  # type: ignore[index]
        if item in ROLES and name is None:
            notes.append(f"{model_type} has no '{item}' projection; that role is skipped")
            continue
        if name not in names:
            names.append(name)  # type: ignore[arg-type]
    if table is not None:
        notes += _fused_notes(requested, table)
    if not names:
        raise ConfigError("lora.target_modules", f"none of {requested} exists in {model_type}",
                          "pick another preset, e.g. lora/target_modules=attention")
    return Resolution(preset=preset, requested=requested, notes=notes,
                      target_modules=[n for n in names if n not in EXPERT_PARAMETERS],
                      target_parameters=[n for n in names if n in EXPERT_PARAMETERS])


def _fused_notes(requested: list[str], table: dict[str, str | None]) -> list[str]:
    """One line per fused module that carries roles the preset did not ask for."""
    notes = []
    for name in dict.fromkeys(v for v in table.values() if v):
        carried = [role for role, n in table.items() if n == name]
        asked = [role for role in carried if role in requested]
        extra = [role for role in carried if role not in requested]
        if len(carried) > 1 and asked and extra:
            notes.append(f"'{name}' is one fused layer for {'+'.join(carried)}: adapting "
                         f"{'+'.join(asked)} also adapts {'+'.join(extra)}")
    return notes


def covered_roles(resolution: Resolution, model_type: str) -> set[str]:
    """The roles really adapted: a fused module covers all of its roles, a literal name the role it plays."""
    table = family_of(model_type) or {}
    names = set(resolution.target_modules) | set(resolution.target_parameters)
    return {role for role, name in table.items() if name in names}


# --- validation against a model's layout ----------------------------------------------------------------------

def matches(layer: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the whole name, or a dotted suffix of it."""
    return layer == target or layer.endswith("." + target)


def validate_against_model(resolution: Resolution, model: Any) -> Resolution:
    """Every resolved name must match at least one linear layer (or expert weight); count what gets adapted."""
    layout = layout_of(model)
    layer_names, expert_names = list(layout.linear), list(layout.experts)
    for target in resolution.target_parameters:
        if not any(matches(name, target) for name in expert_names):
            raise ConfigError("lora.target_modules", f"'{target}' matches no expert weight of this model",
                              "use the attention preset, or list the module names literally")
    distinct = sorted({n.rsplit(".", 1)[-1] for n in layer_names})
    for target in resolution.target_modules:
        if not any(matches(layer, target) for layer in layer_names):
            close = difflib.get_close_matches(target.rsplit(".", 1)[-1], distinct, n=1, cutoff=0.4)
            hint = f"closest: '{close[0]}'. " if close else ""
            raise ConfigError("lora.target_modules", f"'{target}' matches no linear layer of this model "
                              f"(its linear layers: {', '.join(distinct)})", f"{hint}Use one of those names")
    resolution.adapted_layers = sum(
        any(matches(layer, t) for t in resolution.target_modules) for layer in layer_names) + sum(
        any(matches(name, t) for t in resolution.target_parameters) for name in expert_names)
    return resolution


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """name -> (in_features, out_features) of every linear-like layer."""
    return layout_of(model).linear


def check_rank_fits(resolution: Resolution, model: Any, r: int) -> None:
    """A rank above the narrowest adapted layer's width adds parameters and no capacity: refuse it."""
    widths = [min(shape) for name, shape in linear_shapes(model).items()
              if any(matches(name, t) for t in resolution.target_modules)]
    if widths and r > min(widths):
        raise ConfigError("lora.r", f"{r} is larger than the narrowest adapted layer ({min(widths)} wide)",
                          f"use lora.r <= {min(widths)}")


def follow_loaded_model(requested: Iterable[str], preset: str, resolution: Resolution, skeleton: Any,
                        model: Any) -> tuple[Resolution, list[str]]:
    """The targets as resolved on the skeleton, if the loaded model has them; else resolved again for the model
    really loaded (a backend may swap in a checkpoint with another layout), with a note saying so."""
    try:
        return validate_against_model(resolution, model), []
    except ConfigError:
        loaded_type = model.config.model_type
        if family_of(loaded_type) is None:
            raise
        again = validate_against_model(resolve(requested, loaded_type, preset), model)
    note = (f"the loaded model's layers differ from the preset's numbers ({skeleton.config.model_type}): targets "
            f"resolved for the model loaded ({loaded_type}): {again.target_modules + again.target_parameters}")
    return again, [note]
