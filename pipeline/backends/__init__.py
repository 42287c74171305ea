"""Model backends: each loads base model + tokenizer under a quantization, and applies LoRA.

Both expose the same two functions, `load(run, precision)` and `apply_lora(model, run, resolution)`,
so the pipeline never branches on the backend past `get_backend`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def get_backend(name: str) -> ModuleType:
    if name == "unsloth":
        from pipeline.backends import unsloth as backend
    else:
        from pipeline.backends import hf as backend
    return backend


def bnb_config(quant: Any, compute_dtype: Any) -> Any:
    """transformers' BitsAndBytesConfig for the quantization group; None for 16-bit."""
    from transformers import BitsAndBytesConfig

    if quant.bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                                  bnb_4bit_use_double_quant=quant.double_quant,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def loaded_quantization(model: Any) -> str:
    """What the weights really are after loading (a backend may fall back, e.g. int8 on CPU)."""
    kinds = {type(m).__name__ for m in model.modules()}
    if "Linear4bit" in kinds:
        return "4-bit"
    if "Linear8bitLt" in kinds:
        return "8-bit"
    return "none"


def lora_kwargs(lora: Any, resolution: Any) -> dict:
    """The LoRA settings both PEFT and Unsloth take under the same names (plain lists: Unsloth type-checks)."""
    init = {"true": True, "false": False}.get(lora.init_weights, lora.init_weights)
    kwargs = dict(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
                  use_rslora=lora.use_rslora, init_lora_weights=init, target_modules=list(resolution.target_modules),
                  modules_to_save=list(lora.modules_to_save) if lora.modules_to_save else None)
    if resolution.target_parameters:  # MoE experts fused into 3-D weights
        kwargs["target_parameters"] = list(resolution.target_parameters)
    return kwargs
