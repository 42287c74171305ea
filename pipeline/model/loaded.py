"""What the weights really are once loaded: the repo they came from, the quantization its checkpoint declares, and the
layers' own types and 4-bit settings.

`model.config.quantization_config` cannot say it: for a pre-quantized repo (`*-bnb-4bit`) the checkpoint's own
settings win in transformers, and Unsloth's loader then overwrites the attribute with the config it was given.
"""

from __future__ import annotations

from typing import Any

from pipeline.compat import loaded_repo

BNB_LAYERS = {"Linear4bit": 4, "Linear8bitLt": 8}
LISTED = 12  # unquantized linear layers named in the record (then counted)


def describe_loaded(model: Any) -> dict[str, Any]:
    """For summary.json `loaded`: the repo, what its checkpoint declares, and what the layers are."""
    repo = loaded_repo(model)
    return {"repo": repo, "checkpoint_quantization_config": checkpoint_quantization(repo),
            "quantization": layer_quantization(model)}


def checkpoint_quantization(repo: str | None) -> dict | None:
    """The quantization_config a checkpoint's own config.json declares (a pre-quantized repo's); None for a 16-bit
    checkpoint, or when its config cannot be read again."""
    if not repo:
        return None
    from transformers import PretrainedConfig

    try:  # the file loading read: cached, or in a local folder (no request to the hub)
        config, _ = PretrainedConfig.get_config_dict(repo, local_files_only=True)
    except (OSError, ValueError):
        return None
    return config.get("quantization_config")


def layer_quantization(model: Any) -> dict[str, Any]:
    """The linear layers as they are: how many bitsandbytes quantized and with which settings (read from each
    layer's weight), and the linear layers left in 16 bits among them (lm_head; a dynamic 4-bit repo's chosen
    layers). Call it before LoRA wraps the layers."""
    import torch

    quantized, plain = [], []
    for name, module in model.named_modules():
        if type(module).__name__ in BNB_LAYERS:
            quantized.append(module)
        elif isinstance(module, torch.nn.Linear):
            plain.append(name)
    if not quantized:
        return {"bits": 16}
    bits = {BNB_LAYERS[type(m).__name__] for m in quantized}
    states = [getattr(m.weight, "quant_state", None) for m in quantized]
    facts: dict[str, Any] = {"bits": one_or_all(bits), "quantized_layers": len(quantized)}
    if 4 in bits:
        facts.update(
            quant_type=one_or_all({s.quant_type for s in states if s is not None}),
            double_quant=one_or_all({bool(s.nested) for s in states if s is not None}),
            compute_dtype=one_or_all({str(m.compute_dtype).removeprefix("torch.") for m in quantized
                                      if getattr(m, "compute_dtype", None) is not None}))
    facts["unquantized_linear"] = plain[:LISTED] + ([f"... {len(plain) - LISTED} more"] if len(plain) > LISTED else [])
    return facts


def one_or_all(values: set) -> Any:
    """The value all layers share, or every value seen (sorted) when they differ."""
    return next(iter(values)) if len(values) == 1 else sorted(values, key=str)


def loaded_quantization(model: Any) -> str:
    """What the weights really are after loading (a backend may fall back, e.g. int8 on CPU)."""
    kinds = {type(m).__name__ for m in model.modules()}
    for name, bits in BNB_LAYERS.items():
        if name in kinds:
            return f"{bits}-bit"
    return "none"


def quantization_notes(run: Any, loaded: dict) -> list[str]:
    """A line for each 4-bit setting the layers hold other than asked (a pre-quantized checkpoint's own apply)."""
    facts = loaded.get("quantization") or {}
    if facts.get("bits") != 4 or run.quantization.bits != 4:
        return []
    asked = {"quant_type": run.quantization.quant_type, "double_quant": run.quantization.double_quant}
    differing = [f"{key}={facts[key]} (asked {value})" for key, value in asked.items()
                 if key in facts and facts[key] != value]
    if not differing:
        return []
    return [f"the 4-bit layers loaded hold {', '.join(differing)}: {loaded.get('repo')}'s own quantization applies"]
