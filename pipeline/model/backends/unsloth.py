"""Unsloth backend: FastLanguageModel.from_pretrained (4-bit NF4 by default), then get_peft_model.

On a machine without a GPU, Unsloth 2026.10 runs its CPU backend through the same calls. On a GPU it maps hub
names to its pre-quantized repos unless told to load the name as given (see `from_pretrained_kwargs`).
"""

from __future__ import annotations

import sys
from typing import Any

from pipeline.model.backends import bnb_config, changed_4bit_settings, lora_kwargs  # (neither imports torch)
from pipeline.train.precision import Precision, compute_dtype

# Unsloth sets PyTorch's CUDA allocator up (expandable segments) when imported, which only counts before CUDA starts:
# the train command imports it before torch, but a sweep's earlier job on backend=hf may have started CUDA already
CUDA_STARTED_BEFORE_UNSLOTH = "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized()

import unsloth  # noqa: E402,F401 - before transformers, peft and trl on purpose: it patches them


def exact_name_reasons(run: Any) -> list[str]:
    """Why Unsloth must load model.name as named instead of its pre-quantized copy (empty: the copy is fine)."""
    reasons = []
    if run.model.revision:
        reasons.append(f"model.revision={run.model.revision} pins a commit of {run.model.name} itself")
    changed = changed_4bit_settings(run.quantization)
    if run.quantization.bits == 4 and changed:
        reasons.append(f"{', '.join(changed)} (a pre-quantized copy carries its own settings)")
    return reasons


def from_pretrained_kwargs(run: Any, precision: Precision) -> dict[str, Any]:
    """The arguments of FastLanguageModel.from_pretrained (tests check them against its GPU-path signature)."""
    quant = run.quantization
    kwargs: dict[str, Any] = dict(
        model_name=run.model.name,
        max_seq_length=run.model.max_seq_length,
        dtype=precision.dtype,
        load_in_4bit=quant.bits == 4,
        load_in_8bit=quant.bits == 8,
        load_in_16bit=quant.bits == 16,
        full_finetuning=False,
        trust_remote_code=run.model.trust_remote_code,
        revision=run.model.revision,
        # Unsloth drops `revision` and ignores our quantization once it swaps in its pre-quantized repo
        use_exact_model_name=bool(exact_name_reasons(run)),
        random_state=run.seed,
    )
    if quant.bits == 4:
        # Carries quant_type / double_quant / compute dtype; Unsloth's CPU loader uses its own NF4 settings.
        kwargs["quantization_config"] = bnb_config(quant, compute_dtype(quant.compute_dtype, precision))
    return kwargs


def load(run: Any, precision: Precision) -> Any:
    """The model alone: the run's one tokenizer is loaded before it (pipeline.model.loading), not Unsloth's copy."""
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(**from_pretrained_kwargs(run, precision))
    return model


def get_peft_model_kwargs(run: Any, resolution: Any) -> dict[str, Any]:
    """The arguments of FastLanguageModel.get_peft_model (tests check them against its GPU-path signature)."""
    return dict(use_gradient_checkpointing="unsloth" if run.trainer.gradient_checkpointing else False,
                random_state=run.seed, max_seq_length=run.model.max_seq_length, **lora_kwargs(run.lora, resolution))


def apply_lora(model: Any, run: Any, resolution: Any) -> Any:
    from unsloth import FastLanguageModel

    return FastLanguageModel.get_peft_model(model, **get_peft_model_kwargs(run, resolution))


def allocator_notes(precision: Precision) -> list[str]:
    if precision.device == "cuda" and CUDA_STARTED_BEFORE_UNSLOTH:
        return ["CUDA started before Unsloth was imported in this process (an earlier job of the sweep on "
                "backend=hf): its allocator setting (expandable_segments) is not in effect, so peak reserved memory "
                "may differ from this job run alone"]
    return []


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
