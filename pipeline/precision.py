"""Pick weight dtype and mixed-precision flags from the config and the machine (bf16 only where supported)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DTYPE_NAMES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Precision:
    device: str     # "cuda" or "cpu"
    dtype: Any      # torch dtype the base weights load in (and LoRA computes in)
    bf16: bool      # SFTConfig(bf16=...)
    fp16: bool      # SFTConfig(fp16=...)

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def resolve_precision(model_dtype: str) -> Precision:
    """`auto`: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (CPU mixed precision buys little)."""
    import torch

    if torch.cuda.is_available():
        name = model_dtype if model_dtype != "auto" else (
            "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
        dtype = getattr(torch, name)
        return Precision("cuda", dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16)
    name = "float32" if model_dtype == "auto" else model_dtype
    # SFTConfig(bf16=True) raises on a CPU without bf16 support, and fp16 AMP does not exist on CPU.
    return Precision("cpu", getattr(torch, name), bf16=False, fp16=False)


def compute_dtype(quant_compute_dtype: str, precision: Precision) -> Any:
    import torch

    return precision.dtype if quant_compute_dtype == "auto" else getattr(torch, quant_compute_dtype)
