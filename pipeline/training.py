"""Build TRL's SFTConfig and SFTTrainer from the trainer and data groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data import Datasets
from pipeline.precision import Precision


def choose_optimizer(name: str, precision: Precision) -> str:
    """`auto`: bitsandbytes' 8-bit AdamW on GPU (Unsloth's default, saves optimizer memory), torch AdamW on CPU."""
    if name != "auto":
        return name
    return "adamw_8bit" if precision.device == "cuda" else "adamw_torch"


def eval_strategy(trainer: Any, has_eval: bool) -> str:
    if not has_eval:
        return "no"
    return "steps" if trainer.eval_steps else "epoch"


def build_sft_config(run: Any, precision: Precision, checkpoints_dir: Path, datasets: Datasets,
                     report_to: list[str], run_name: str) -> Any:
    from trl import SFTConfig

    t = run.trainer
    return SFTConfig(
        output_dir=str(checkpoints_dir),
        run_name=run_name,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        optim=choose_optimizer(t.optim, precision),
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,  # the starting loss is always on record, even for runs shorter than logging_steps
        eval_strategy=eval_strategy(t, datasets.eval is not None),
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=run.seed,
        data_seed=run.seed,
        bf16=precision.bf16,
        fp16=precision.fp16,
        # The backend already set gradient checkpointing up (Unsloth's own, or PEFT's k-bit preparation).
        gradient_checkpointing=False,
        report_to=report_to,
        max_length=run.data.max_length or run.model.max_seq_length,
        packing=run.data.packing,
        assistant_only_loss=datasets.assistant_only_loss,
        completion_only_loss=datasets.completion_only_loss,
        dataset_num_proc=None,
    )


def build_trainer(model: Any, tokenizer: Any, datasets: Datasets, sft_config: Any, callbacks: list,
                  precision: Precision) -> Any:
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=sft_config, train_dataset=datasets.train,
                         eval_dataset=datasets.eval, callbacks=callbacks)
    keep_adapter_dtype(trainer.model, precision)
    return trainer


def keep_adapter_dtype(model: Any, precision: Precision) -> None:
    """Undo TRL's bf16 cast of QLoRA adapters when training without mixed precision (e.g. fp32 on CPU).

    TRL casts trainable weights of quantized models to bf16 (the QLoRA recipe under bf16 autocast). Without
    autocast the optimizer would then update bf16 weights directly, rounding small updates away, and the saved
    adapter would compute differently from the one reloaded by PEFT (which upcasts to fp32).
    """
    if precision.bf16 or precision.fp16:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != precision.dtype:
            param.data = param.data.to(precision.dtype)
