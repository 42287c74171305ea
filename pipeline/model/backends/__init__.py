"""Model backends: each loads base model + tokenizer under a quantization, and applies LoRA.

Both expose the same two functions, `load(run, precision) -> model` and `apply_lora(model, run, resolution)`,
so the pipeline never branches on the backend past `get_backend`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def get_backend(name: str) -> ModuleType:
    from pipeline.outputs.logs import prints_to_log, quiet_progress_bars, route_library_logs

    with prints_to_log(name):  # Unsloth prints a banner on import: it goes to the log file
        if name == "unsloth":
            from pipeline.model.backends import unsloth as backend
        else:
            from pipeline.model.backends import hf as backend
    route_library_logs()
    quiet_progress_bars()  # transformers' weight-loading bar: a refusal after loading stays one line
    return backend


def bnb_config(quant: Any, compute_dtype: Any, storage: dict | None = None) -> Any:
    """transformers' BitsAndBytesConfig for the quantization group; None for 16-bit. `storage`: FSDP's float
    bnb_4bit_quant_storage (pipeline.train.distributed.quant_storage)."""
    from transformers import BitsAndBytesConfig

    if quant.bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                                  bnb_4bit_use_double_quant=quant.double_quant,
                                  bnb_4bit_compute_dtype=compute_dtype, **(storage or {}))
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def lora_kwargs(lora: Any, resolution: Any) -> dict:
    """The LoRA settings both PEFT and Unsloth take under the same names (plain lists: Unsloth type-checks)."""
    init = {"true": True, "false": False}.get(lora.init_weights, lora.init_weights)
    kwargs = dict(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
                  use_rslora=lora.use_rslora, init_lora_weights=init, target_modules=list(resolution.target_modules),
                  modules_to_save=list(lora.modules_to_save) if lora.modules_to_save else None)
    if resolution.target_parameters:  # MoE experts fused into 3-D weights
        kwargs["target_parameters"] = list(resolution.target_parameters)
    if resolution.trainable_token_indices:  # rows the checkpoint never trained (pipeline.model.untrained)
        kwargs["trainable_token_indices"] = {k: list(v) for k, v in resolution.trainable_token_indices.items()}
    return kwargs


# Unsloth's GPU path refuses these LoRA initialisations on a quantized base (they need 16-bit weights), and its
# CPU backend refuses pissa and olora outright; CorDA needs a preprocessing pass Unsloth only runs when asked to.
UNSLOTH_INIT_REFUSED = {
    ("cuda", True): {"pissa", "corda"},
    ("cuda", False): {"corda"},
    ("cpu", True): {"pissa", "olora", "corda"},
    ("cpu", False): {"pissa", "olora", "corda"},
}


def check_options(run: Any, device: str) -> None:
    """Refuse, before any weight loads, LoRA options the backend rejects on this kind of device."""
    from pipeline.errors import ConfigError

    init = run.lora.init_weights
    quantized = run.quantization.bits in (4, 8)
    if run.backend == "unsloth" and init in UNSLOTH_INIT_REFUSED[(device, quantized)]:
        where = "GPU path" if device == "cuda" else "CPU backend"
        base = "a quantized base" if quantized else "a 16-bit base"
        fix = ("use quantization=none, or backend=hf" if device == "cuda" and quantized and init != "corda"
               else "use backend=hf, or init_weights true|gaussian")
        raise ConfigError("lora.init_weights", f"'{init}' is refused by Unsloth's {where} with {base}", fix)
    if run.model.name.endswith("bnb-4bit") and (run.quantization.bits != 4 or changed_4bit_settings(run.quantization)):
        raise ConfigError("quantization", f"model.name '{run.model.name}' is already quantized to 4-bit and its "
                          "own settings apply", "use the 16-bit repo to choose the quantization, or quantization=nf4")


def changed_4bit_settings(quant: Any) -> list[str]:
    """`quantization.<key>=<value>` for each 4-bit setting that differs from the default (NF4 + double quant)."""
    from pipeline.config.schema import QuantizationConfig

    default = QuantizationConfig()
    return [f"quantization.{key}={getattr(quant, key)}" for key in ("quant_type", "double_quant", "compute_dtype")
            if getattr(quant, key) != getattr(default, key)]


def asked_quantization(run: Any) -> str:
    return "none" if run.quantization.bits == 16 else f"{run.quantization.bits}-bit"
