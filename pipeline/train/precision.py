"""Pick weight dtype and mixed precision from the config and the machine, before any weight loads.

bf16 only where the GPU computes it natively: `torch.cuda.is_bf16_supported()` also counts emulation (a T4 or V100
"supports" bf16 at a fraction of fp16's speed), so we ask with `including_emulation=False`. An explicit dtype the
machine or backend cannot honour is replaced with what will really run, and a one-line note says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Accelerator:
    """The device training runs on, as far as precision is concerned."""
    kind: str                             # "cuda" or "cpu"
    name: str
    capability: tuple[int, int] | None    # CUDA compute capability, e.g. (7, 5) for a T4
    native_bf16: bool

    @property
    def label(self) -> str:
        return f"{self.name} (sm{self.capability[0]}{self.capability[1]})" if self.capability else self.name


def detect_accelerator() -> Accelerator:
    import torch

    if torch.cuda.is_available():
        return Accelerator("cuda", torch.cuda.get_device_name(), tuple(torch.cuda.get_device_capability()),
                           torch.cuda.is_bf16_supported(including_emulation=False))
    return Accelerator("cpu", "cpu", None, False)


@dataclass(frozen=True)
class Precision:
    device: str     # "cuda" or "cpu"
    dtype: Any      # torch dtype the base weights load in (and LoRA computes in)
    bf16: bool      # SFTConfig(bf16=...): bf16 autocast
    fp16: bool      # SFTConfig(fp16=...): fp16 autocast with a GradScaler
    notes: tuple[str, ...] = field(default=())  # what was asked and could not be, in one line each

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def autocast(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "none"


def resolve_precision(model_dtype: str, backend: str = "hf", accelerator: Accelerator | None = None) -> Precision:
    """`auto`: bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on CPU (CPU mixed precision buys little)."""
    import torch

    accelerator = accelerator or detect_accelerator()
    if accelerator.kind != "cuda":
        name = "float32" if model_dtype == "auto" else model_dtype
        notes = []
        if name == "float16":  # no fp16 autocast or loss scaling on CPU: updates underflow and the loss goes NaN
            name = "float32"
            notes.append("model.dtype=float16: a CPU has no fp16 mixed precision (training would end in NaN); "
                         "training in float32 instead")
        # SFTConfig(bf16=True) raises on a CPU without bf16 support, and fp16 AMP does not exist on CPU.
        return Precision("cpu", getattr(torch, name), bf16=False, fp16=False, notes=tuple(notes))
    best_16bit = "bfloat16" if accelerator.native_bf16 else "float16"
    name, notes = (best_16bit if model_dtype == "auto" else model_dtype), []
    if name == "bfloat16" and not accelerator.native_bf16:
        name = "float16"
        notes.append(f"model.dtype=bfloat16: {accelerator.label} has no native bf16 (emulated, very slow); "
                     "training in float16 instead")
    if name == "float32" and backend == "unsloth" and accelerator.native_bf16:
        # Unsloth's GPU trainer turns bf16 autocast on for a float32 model wherever bf16 is native
        name = "bfloat16"
        notes.append("model.dtype=float32: Unsloth's GPU trainer runs a float32 model under bf16 autocast; "
                     "loading in bfloat16 so that the record says what runs (backend=hf trains in float32)")
    dtype = getattr(torch, name)
    return Precision("cuda", dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, notes=tuple(notes))


def compute_dtype(quant_compute_dtype: str, precision: Precision) -> Any:
    import torch

    return precision.dtype if quant_compute_dtype == "auto" else getattr(torch, quant_compute_dtype)
