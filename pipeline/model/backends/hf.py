"""Plain Hugging Face backend: transformers + BitsAndBytesConfig, prepare_model_for_kbit_training, PEFT LoRA."""

from __future__ import annotations

from typing import Any

from pipeline.compat import keep_trainable_4bit_layout
from pipeline.config.launch import local_rank
from pipeline.model.backends import bnb_config, lora_kwargs
from pipeline.train.distributed import quant_storage
from pipeline.train.precision import Precision, compute_dtype


def load(run: Any, precision: Precision) -> Any:
    from transformers import AutoModelForCausalLM

    quant = run.quantization
    dtype = compute_dtype(quant.compute_dtype, precision)
    quantization_config = bnb_config(quant, dtype, quant_storage(run.distributed, dtype))
    model = AutoModelForCausalLM.from_pretrained(
        run.model.name,
        dtype=precision.dtype,
        quantization_config=quantization_config,
        # placed once (no later .to() re-quantizes): this process's GPU under a launch of several
        device_map={"": local_rank() if precision.device == "cuda" else "cpu"},
        trust_remote_code=run.model.trust_remote_code,
        revision=run.model.revision,
    )
    if precision.device == "cpu":
        keep_trainable_4bit_layout(model)
    if quantization_config is not None:
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32, freezes the base, and sets up gradient checkpointing for k-bit training.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=run.trainer.gradient_checkpointing)
    elif run.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


def apply_lora(model: Any, run: Any, resolution: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(run.lora, resolution))
    return get_peft_model(model, config)
