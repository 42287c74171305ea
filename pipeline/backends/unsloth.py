"""Unsloth backend: FastLanguageModel.from_pretrained (4-bit NF4 by default), then get_peft_model.

On a machine without a GPU, Unsloth 2026.10 runs its CPU backend through the same calls.
"""

from __future__ import annotations

from typing import Any

import unsloth  # noqa: F401 - imported first on purpose: it patches transformers, peft and trl

from pipeline.backends import bnb_config, lora_kwargs
from pipeline.precision import Precision, compute_dtype


def load(run: Any, precision: Precision) -> tuple[Any, Any]:
    from unsloth import FastLanguageModel

    quant = run.quantization
    kwargs: dict[str, Any] = {}
    if quant.bits == 4:
        # Carries quant_type / double_quant / compute dtype; Unsloth's CPU loader uses its own NF4 settings.
        kwargs["quantization_config"] = bnb_config(quant, compute_dtype(quant.compute_dtype, precision))
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=run.model.name,
        max_seq_length=run.model.max_seq_length,
        dtype=precision.dtype,
        load_in_4bit=quant.bits == 4,
        load_in_8bit=quant.bits == 8,
        load_in_16bit=quant.bits == 16,
        full_finetuning=False,
        trust_remote_code=run.model.trust_remote_code,
        revision=run.model.revision,
        random_state=run.seed,
        **kwargs,
    )
    return model, tokenizer


def apply_lora(model: Any, run: Any, resolution: Any) -> Any:
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(
        model,
        use_gradient_checkpointing="unsloth" if run.trainer.gradient_checkpointing else False,
        random_state=run.seed,
        max_seq_length=run.model.max_seq_length,
        **lora_kwargs(run.lora, resolution),
    )


def fast_path_blockers(run: Any, resolved_roles: set[str]) -> list[str]:
    """Conditions that turn off Unsloth's fused LoRA kernels on GPU (it then warns and runs slower)."""
    blockers = []
    if run.lora.dropout != 0:
        blockers.append(f"lora.dropout={run.lora.dropout} (fused kernels need 0)")
    if run.lora.bias != "none":
        blockers.append(f"lora.bias={run.lora.bias} (fused kernels need none)")
    for group in (("q", "k", "v"), ("gate", "up", "down")):
        present = [r for r in group if r in resolved_roles]
        if present and len(present) != len(group):
            blockers.append(f"only {'+'.join(present)} of {'+'.join(group)} adapted (fused kernels need all)")
    return blockers
