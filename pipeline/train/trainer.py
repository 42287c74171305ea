"""Build TRL's SFTConfig and SFTTrainer from the trainer and data groups."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipeline.compat import undo_trl_adapter_cast
from pipeline.data.formats import Datasets
from pipeline.train.precision import Precision

CUDA_ONLY_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit")


def choose_optimizer(name: str, precision: Precision) -> str:
    """`auto`: bitsandbytes' 8-bit AdamW on GPU (Unsloth's default, saves optimizer memory), torch AdamW on CPU;
    bitsandbytes' 8-bit and paged optimizers need CUDA, so on CPU torch's AdamW stands in (see `machine_notes`)."""
    if name == "auto" or (name in CUDA_ONLY_OPTIMIZERS and precision.device != "cuda"):
        return "adamw_8bit" if precision.device == "cuda" else "adamw_torch"
    return name


def unused_libraries(run: Any, single_job: bool) -> list[str]:
    """Installed libraries this run will not touch, which transformers, TRL and PEFT would import anyway (see
    `compat.hide_from_imports`): W&B without a logger, bitsandbytes for a 16-bit base on the hf backend with a torch
    optimizer. None in a process that runs several jobs (a sweep): a later job may need them. Asks torch for the
    device only on the hf backend: on Unsloth's, `import unsloth` must come before torch (see `get_backend`)."""
    if not single_job:
        return []
    unused = []
    if run.logger.kind == "none" or run.logger.mode == "disabled":
        unused.append("wandb")
    if run.backend == "hf" and run.quantization.bits == 16:
        from pipeline.train.precision import resolve_precision

        if choose_optimizer(run.trainer.optim, resolve_precision(run.model.dtype, "hf")) not in CUDA_ONLY_OPTIMIZERS:
            unused.append("bitsandbytes")
    return unused


def machine_notes(run: Any, precision: Precision) -> list[str]:
    """Settings this machine cannot run as asked, and what runs instead: one line each, before any weight loads."""
    notes = []
    if run.trainer.optim in CUDA_ONLY_OPTIMIZERS and precision.device != "cuda":
        notes.append(f"trainer.optim={run.trainer.optim}: bitsandbytes' 8-bit and paged optimizers need CUDA; "
                     "using adamw_torch")
    if run.backend == "unsloth" and run.quantization.bits == 8 and precision.device != "cuda":
        notes.append("quantization=int8: Unsloth's CPU backend loads 8-bit as 16-bit weights (backend=hf keeps 8-bit)")
    return notes


def eval_strategy(trainer: Any, has_eval: bool) -> str:
    if not has_eval:
        return "no"
    return "steps" if trainer.eval_steps else "epoch"


def head_settings(model: Any) -> tuple[dict[str, Any], list[str]]:
    """SFTConfig settings the output layer asks for, with a note each. TRL's default chunked loss reads
    `lm_head.bias`, which PEFT's wrapper for trainable token rows (pipeline.model.untrained) does not expose: such a
    run computes the plain loss over the full logits (Unsloth's GPU trainer does so anyway)."""
    if type(model.get_output_embeddings()).__name__ != "TrainableTokensWrapper":
        return {}, []
    return {"loss_type": "nll"}, ["lm_head trains token rows (PEFT's trainable tokens), which TRL's chunked loss "
                                  "cannot read: loss_type=nll (full logits, more memory on a large vocabulary)"]


def build_sft_config(kwargs: dict[str, Any]) -> Any:
    """`trl.SFTConfig`: TRL's own, or on a GPU the UnslothSFTConfig that `import unsloth` put in its place.

    Unsloth's config has a `max_seq_length` field of its own (None by default), and its trainer then sets
    `max_length` from it, or from the model's max_seq_length when `max_length` is 1024 (TRL's default, so it reads
    as "not given"): given the same value, the trainer keeps ours."""
    import dataclasses

    from trl import SFTConfig

    if "max_seq_length" in {f.name for f in dataclasses.fields(SFTConfig)}:
        kwargs = {**kwargs, "max_seq_length": kwargs["max_length"]}
    return SFTConfig(**kwargs)


def sft_config_kwargs(run: Any, precision: Precision, checkpoints_dir: Path, datasets: Datasets,
                      report_to: list[str], run_name: str, world_size: int = 1) -> dict[str, Any]:
    from pipeline.train.distributed import trainer_kwargs

    t = run.trainer
    return dict(
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
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (the default hides it), so the guard sees it
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
        # our rows are tokenized and length-checked already: Unsloth's GPU config leaves this unset, and its trainer
        # would then scan every row in Python and switch padding-free off anyway (unsloth/trainer.py, rl.py)
        padding_free=False,
        assistant_only_loss=datasets.assistant_only_loss,
        completion_only_loss=datasets.completion_only_loss,
        dataset_num_proc=None,
        # the data is already tokenized, masked and length-checked by TRL's own code (pipeline.data.prepare): neither
        # TRL nor Unsloth's GPU replacement prepares it again (packing still goes through the trainer's own path)
        dataset_kwargs={"skip_prepare_dataset": not run.data.packing},
        **trainer_kwargs(run.distributed, precision.device, world_size),
    )


def build_trainer(model: Any, tokenizer: Any, datasets: Datasets, sft_config: Any, callbacks: list,
                  precision: Precision, backend: str) -> Any:
    import inspect

    from trl import SFTTrainer

    # Unsloth's generated GPU trainer adds a `tokenizer=None` parameter and runs its checks on the model and data
    # (fix_untrained_tokens) with that, not with processing_class: given only the latter, they read None
    legacy = {"tokenizer": tokenizer} if "tokenizer" in inspect.signature(SFTTrainer.__init__).parameters else {}
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=sft_config, train_dataset=datasets.train,
                         eval_dataset=datasets.eval, callbacks=callbacks, **legacy)
    dtype = adapter_dtype(backend, precision)
    if dtype is not None:
        undo_trl_adapter_cast(trainer.model, dtype)
    return trainer


def adapter_dtype(backend: str, precision: Precision) -> Any:
    """The dtype trainable weights must have; None leaves them as the backend set them up.

    TRL casts the adapters of a quantized model to bf16. On the hf backend they go back to fp32 whatever the
    autocast: the optimizer keeps fp32 master weights (PEFT's own default), fp16 AMP's GradScaler needs fp32
    parameters, and a reloaded adapter (PEFT upcasts it) computes like the trained one. Unsloth's GPU trainer
    removes TRL's cast and follows its own recipe; its CPU backend does not, and trains without autocast there.
    """
    import torch

    if backend == "hf":
        return torch.float32
    if precision.autocast == "none":
        return precision.dtype
    return None


def trainable_dtypes(model: Any) -> list[str]:
    """The dtypes of the trainable weights as they are (recorded in summary.json)."""
    return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})


BACKEND_CHOSEN = ("padding_free", "loss_type", "dataset_num_proc", "max_length", "packing", "torch_empty_cache_steps")


def settings_in_effect(trainer: Any) -> dict:
    """Settings a backend's trainer may choose itself (Unsloth's GPU trainer: padding-free, nll loss, workers, emptying
    the CUDA cache every 250 steps)."""
    return {key: getattr(trainer.args, key, None) for key in BACKEND_CHOSEN}


def reference_settings(asked: dict[str, Any]) -> dict[str, Any]:
    """What TRL's own SFTConfig makes of our arguments (build it before the trainer: it resets accelerate's state)."""
    from pipeline.compat import trl_sft_config

    reference = settings_in_effect(SimpleNamespace(args=trl_sft_config()(**asked)))
    return {**reference, **{key: asked[key] for key in BACKEND_CHOSEN if key in asked}}  # what we asked for wins


def changed_by_backend(reference: dict[str, Any], trainer: Any) -> list[str]:
    """One line per setting the trainer runs with other than TRL's own config would (Unsloth's GPU trainer)."""
    return [f"the trainer runs {key}={value} instead of {reference[key]}"
            for key, value in settings_in_effect(trainer).items() if value != reference[key]]


def autocast_in_effect(trainer: Any) -> str:
    """The mixed precision the trainer will really run (a backend's trainer may change what we asked)."""
    return "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "none"


def packing_facts(trainer: Any, samples: int) -> dict | None:
    """How TRL packed the training samples: sequences before and after, and how full the packed ones are."""
    if not trainer.args.packing:
        return None
    packed = trainer.train_dataset
    tokens = sum(len(ids) for ids in packed["input_ids"])
    trained = sum(sum(label != -100 for label in labels) for labels in packed["labels"])
    return {"samples": samples, "sequences": len(packed), "max_length": trainer.args.max_length,
            "fill_ratio": round(tokens / (len(packed) * trainer.args.max_length), 4), "trained_tokens": trained}
