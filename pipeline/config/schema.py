"""The config schema: one dataclass per group, each field's type, default and allowed values, defined once.

Hydra composes `conf/` on top of these dataclasses (registered in its ConfigStore), so an unknown key or a wrong
type fails at compose time; `pipeline.config.validate` then checks every field's `choices` and `check` below.
Each group's default preset (`conf/<group>/`, the option named in `conf/train.yaml`) documents the fields with one
comment each. This module must not import torch (`--cfg job` stays fast).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
DTYPES = ("bfloat16", "float16", "float32")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
              "adafactor", "sgd", "lion_8bit", "paged_lion_8bit")


def one_of(default: Any, *allowed: Any) -> Any:
    """A field whose value must be one of `allowed` (OmegaConf 2.3 has no Literal type)."""
    assert default in allowed
    return field(default=default, metadata={"choices": allowed})


def checked(default: Any, holds: Callable[[Any], bool], must: str, example: str) -> Any:
    """A field whose value must satisfy `holds`; `must` says what, `example` is a valid value for the message."""
    assert default is MISSING or holds(default)
    return field(default=default, metadata={"check": (holds, must, example)})


def at_least(minimum: float, default: Any, example: str, nullable: str = "") -> Any:
    """`checked` for a lower bound; `nullable` says what null means when null is allowed."""
    must = f"must be null ({nullable}) or at least {minimum}" if nullable else f"must be at least {minimum}"
    return checked(default, lambda v: (nullable and v is None) or (v is not None and v >= minimum), must, example)


@dataclass
class ModelConfig:
    name: str = MISSING
    max_seq_length: int = at_least(8, 2048, "2048")
    dtype: str = one_of("auto", "auto", *DTYPES)
    chat_template: Optional[str] = None
    trust_remote_code: bool = False
    revision: Optional[str] = None
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantizationConfig:
    bits: int = one_of(4, 4, 8, 16)
    quant_type: str = one_of("nf4", "nf4", "fp4")
    double_quant: bool = True
    compute_dtype: str = one_of("auto", "auto", *DTYPES)


@dataclass
class LoraConfig:
    r: int = at_least(1, 16, "16 (typical: 8 to 64)")
    alpha: int = at_least(1, 16, "16 (usually r or 2 * r)")
    dropout: float = checked(0.0, lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", "0.0 (keeps Unsloth's fast path)")
    bias: str = one_of("none", "none", "all", "lora_only")
    use_rslora: bool = False
    init_weights: str = one_of("true", "true", "false", "gaussian", "corda", "pissa", "olora")
    target_modules: list[str] = field(default_factory=lambda: list(ROLES), metadata={"check": (
        lambda v: len(v) > 0, "must name at least one module or role", "[q,k,v,o]")})
    modules_to_save: Optional[list[str]] = None
    untrained_tokens: str = one_of("train", "train", "refuse")


FORMATS = ("auto", "messages", "alpaca", "sharegpt", "text", "prompt_completion")


@dataclass
class SourceConfig:
    """One of several sources (data.sources.<name>): read and normalized in its own format, then mixed."""
    source: Any = MISSING
    subset: Optional[str] = None
    split: str = "train"
    format: str = one_of("auto", *FORMATS)
    columns: Any = None
    max_samples: Optional[int] = at_least(1, None, "1000", nullable="all samples")
    weight: float = checked(1.0, lambda v: v > 0, "must be positive", "0.25")


@dataclass
class DataConfig:
    source: Any = MISSING
    # name -> SourceConfig's fields; typed Any so that a whole mapping can be given on the command line (struct mode
    # refuses new keys in a typed Dict); each entry is checked against SourceConfig in validate
    sources: Any = None
    mix: str = one_of("concat", "concat", "interleave")
    stopping_strategy: str = one_of("first_exhausted", "first_exhausted", "all_exhausted")
    subset: Optional[str] = None
    split: str = "train"
    format: str = one_of("auto", *FORMATS)
    columns: Any = None  # a mapping; typed Any because OmegaConf cannot merge a dict into an Optional[Dict]
    loss_on: str = one_of("responses", "responses", "all")
    mask_history: bool = False
    val_size: float = checked(0.0, lambda v: v >= 0, "must be 0, a fraction in (0, 1) or a count", "0.1")
    eval_source: Any = None
    max_samples: Optional[int] = at_least(1, None, "1000", nullable="all samples")
    max_length: Optional[int] = at_least(8, None, "2048", nullable="the model's max_seq_length")
    overlength: str = one_of("auto", "auto", "drop", "truncate", "raise", "chunk")
    sample_by: str = one_of("paragraph", "paragraph", "document", "line")
    packing: bool = False
    cache: bool = True
    num_proc: Optional[int] = at_least(1, None, "4", nullable="one process per core from 10,000 samples on")
    preview_samples: int = at_least(0, 3, "3")
    streaming: bool = False
    streaming_chunk: int = at_least(10, 1000, "1000")


@dataclass
class TrainerConfig:
    learning_rate: float = checked(2e-4, lambda v: 0 < v < 1, "must be in (0, 1)", "2e-4")
    num_train_epochs: float = checked(1.0, lambda v: v > 0, "must be positive", "1")
    max_steps: int = checked(-1, lambda v: v == -1 or v >= 1, "must be -1 (use epochs) or at least 1", "100")
    per_device_train_batch_size: int = at_least(1, 2, "2")
    per_device_eval_batch_size: int = at_least(1, 2, "2")
    gradient_accumulation_steps: int = at_least(1, 4, "4")
    warmup_steps: float = checked(0.03, lambda v: v >= 0, "must be >= 0 (a fraction of all steps when < 1)", "0.03")
    lr_scheduler_type: str = one_of("linear", *SCHEDULERS)
    weight_decay: float = checked(0.01, lambda v: v >= 0, "must be >= 0", "0.01")
    optim: str = one_of("auto", *OPTIMIZERS)
    max_grad_norm: float = checked(1.0, lambda v: v >= 0, "must be >= 0 (0 turns clipping off)", "1.0")
    gradient_checkpointing: bool = True
    logging_steps: int = at_least(1, 1, "10")
    eval_steps: Optional[int] = at_least(1, None, "50", nullable="once per epoch")
    save_steps: int = at_least(1, 100, "100")
    save_total_limit: Optional[int] = at_least(1, 2, "2", nullable="keep all")


METHODS = ("sft", "dpo", "orpo", "simpo", "kto")
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_pair",
              "apo_zero", "apo_down", "discopop", "sft")  # TRL's DPOConfig.loss_type
KTO_LOSSES = ("kto", "apo_zero_unpaired")  # TRL's KTOConfig.loss_type


def positive_or_null(example: str) -> Any:
    return checked(None, lambda v: v is None or v > 0, "must be null (the method does not use it) or positive",
                   example)


@dataclass
class MethodConfig:
    """The training objective: SFT, or a preference method on TRL's trainer for it. Each preset (conf/method/) sets
    the fields its method reads; a field another method reads stays null (refused when set: see validate)."""
    name: str = one_of("sft", *METHODS)
    beta: Optional[float] = positive_or_null("0.1")
    loss_type: Optional[str] = None
    label_smoothing: Optional[float] = checked(None, lambda v: v is None or 0 <= v < 0.5,
                                               "must be null or in [0, 0.5)", "0.0")
    simpo_gamma: Optional[float] = checked(None, lambda v: v is None or v >= 0, "must be null or >= 0", "0.5")
    cpo_alpha: Optional[float] = checked(None, lambda v: v is None or v >= 0, "must be null or >= 0", "0.0")
    desirable_weight: Optional[float] = positive_or_null("1.0")
    undesirable_weight: Optional[float] = positive_or_null("1.0")
    max_prompt_length: Optional[int] = at_least(1, None, "512", nullable="no limit of its own")


METHOD_FIELDS = {  # the fields each method reads (all others stay null); max_prompt_length may be null
    "sft": (),
    "dpo": ("beta", "loss_type", "label_smoothing", "max_prompt_length"),
    "orpo": ("beta", "max_prompt_length"),
    "simpo": ("beta", "simpo_gamma", "cpo_alpha", "label_smoothing", "max_prompt_length"),
    "kto": ("beta", "loss_type", "desirable_weight", "undesirable_weight", "max_prompt_length"),
}
METHOD_LOSSES = {"dpo": DPO_LOSSES, "kto": KTO_LOSSES}


@dataclass
class LoggerConfig:
    kind: str = one_of("wandb", "wandb", "none")
    project: str = "llm-finetune"
    entity: Optional[str] = None
    mode: str = one_of("auto", "auto", "online", "offline", "disabled")
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    samples: int = at_least(1, 16, "16")
    max_new_tokens: int = at_least(1, 64, "64")
    before_after: bool = False
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: Optional[int] = at_least(1, None, "100", nullable="every sample")


@dataclass
class DistributedConfig:
    strategy: str = one_of("none", "none", "ddp", "fsdp")
    backend: str = one_of("auto", "auto", "nccl", "gloo")
    processes: int = at_least(1, 1, "2")
    find_unused_parameters: bool = False
    reshard_after_forward: bool = True
    cpu_ram_efficient_loading: bool = True
    cpu_offload: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    init_from: Optional[str] = None
    name: Optional[str] = checked(None, lambda v: v is None or re.fullmatch(r"[\w.+-]+", v) is not None,
                                  "must be letters, digits, '_', '-', '.' or '+' (it names the run directory)",
                                  "my_run")
    seed: int = checked(3407, lambda v: 0 <= v < 2**32, "must be in [0, 2**32) (numpy's and torch's seeds)", "3407")
    backend: str = one_of("unsloth", "unsloth", "hf")
    resume: Optional[str] = None
    objective: str = one_of("eval_loss", "eval_loss", "final_loss")


@dataclass
class ExportConfig:
    format: str = one_of("merged_16bit", "merged_16bit", "adapter", "gguf")
    dtype: str = one_of("bfloat16", *DTYPES)
    quantization: str = one_of("q8_0", "q8_0", "f16", "q4_k_m")


@dataclass
class GenerateConfig:
    source: str = one_of("adapter", "adapter", "merged_16bit")
    base: str = one_of("as_trained", "as_trained", "16bit")
    max_new_tokens: int = at_least(1, 128, "128")
    temperature: float = checked(0.0, lambda v: v >= 0, "must be >= 0 (0: greedy)", "0.7")
    top_p: float = checked(1.0, lambda v: 0 < v <= 1, "must be in (0, 1]", "0.9")
    system: Optional[str] = None


@dataclass
class AfterConfig:
    """The commands that work on a finished run: export, generate, evaluate."""
    run: Optional[str] = None
    prompt: Optional[str] = None
    prompts_file: Optional[str] = None
    unquantized_base: Optional[str] = None
    export: ExportConfig = field(default_factory=ExportConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


GROUPS = {"model": ModelConfig, "quantization": QuantizationConfig, "lora": LoraConfig, "data": DataConfig,
          "trainer": TrainerConfig, "logger": LoggerConfig, "distributed": DistributedConfig, "method": MethodConfig}


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore: `train.yaml` extends `schema`, each group file extends its node."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=TrainConfig)
    cs.store(name="after_schema", node=AfterConfig)
    cs.store(group="export", name="export_schema", node=ExportConfig)
    cs.store(group="generate", name="generate_schema", node=GenerateConfig)
    cs.store(group="eval", name="eval_schema", node=EvalConfig)
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
