"""Every use of a library's private API or version-specific behaviour, in one place, each with its own test.

- TRL's `SFTTrainer._prepare_dataset` (tokenize + masks), taken from TRL's own file even where Unsloth's GPU path
  replaced `trl.SFTTrainer` with a generated class whose preparation differs.
- TRL 1.14's bf16 cast of the trainable weights of quantized models, undone where it is wrong.
- bitsandbytes 0.50's in-place repack of 4-bit weights on CPU, switched off.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

PRISTINE_PREFIX = "trl.trainer._pipeline_pristine_"


def pristine_trl_module(name: str) -> ModuleType:
    """A private copy of `trl.trainer.<name>`, executed from TRL's own file, whatever was patched into `trl` since.

    On a CUDA machine `import unsloth` rebinds `trl.SFTTrainer` / `trl.SFTConfig` (also in `trl.trainer` and its
    submodules) to generated classes: the trainer's `_prepare_dataset` becomes Unsloth's rewrite, which fails on
    prompt/completion data and drops the labels and EOS of text data, and the config gains new defaults. TRL's
    files are untouched, so a copy executed once under its own module name gives back the originals on every
    machine. Relative imports resolve in `trl.trainer`, so the copy shares TRL's helpers.
    """
    module_name = PRISTINE_PREFIX + name
    module = sys.modules.get(module_name)
    if module is None:
        origin = importlib.util.find_spec(f"trl.trainer.{name}").origin
        spec = importlib.util.spec_from_file_location(module_name, origin)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # datasets' fingerprinting pickles functions by module name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return module


def trl_prepare_dataset() -> Callable[..., Any]:
    """TRL's own `SFTTrainer._prepare_dataset` (tokenize, chat template, EOS, assistant/completion masks)."""
    return pristine_trl_module("sft_trainer").SFTTrainer._prepare_dataset


def trl_sft_config() -> type:
    """TRL's own `SFTConfig` (Unsloth's GPU replacement adds `max_seq_length=None` and other defaults)."""
    return pristine_trl_module("sft_config").SFTConfig


def undo_trl_adapter_cast(model: Any, dtype: Any) -> int:
    """Give trainable weights back the dtype `dtype` after TRL 1.14 cast them to bf16; returns how many changed.

    TRL casts the trainable weights of a quantized model to bf16 (marked temporary in `sft_trainer.py`). The
    optimizer then updates bf16 weights directly (small updates round away), fp16 AMP's GradScaler cannot unscale
    bf16 gradients, and a reloaded adapter (PEFT upcasts it) computes differently from the trained one.
    """
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def keep_trainable_4bit_layout(model: Any) -> None:
    """Stop bitsandbytes' CPU backend from repacking 4-bit weights for its AVX512-BF16 kernel.

    bitsandbytes 0.50 repacks a Linear4bit weight in place on the first no-grad forward (an eval step) or
    state_dict() call and never unpacks it: backward through it is then wrong and the base drifts from the
    checkpoint. Unsloth's CPU loader switches this off the same way; GPUs are unaffected.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
