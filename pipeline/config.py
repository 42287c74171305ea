"""The config schema (one dataclass per group), its registration with Hydra, and semantic validation.

Hydra composes `conf/` on top of these dataclasses, so an unknown key or a wrong type fails at compose time.
`to_runconfig` then checks values (ranges, choices, combinations) and returns typed objects: everything past
this module sees dataclasses, never a DictConfig. This module must not import torch (`--cfg job` stays fast).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.errors import ConfigError, did_you_mean

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class ModelConfig:
    name: str = MISSING
    max_seq_length: int = 2048
    dtype: str = "auto"
    chat_template: Optional[str] = None
    trust_remote_code: bool = False
    revision: Optional[str] = None
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantizationConfig:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    bias: str = "none"
    use_rslora: bool = False
    init_weights: str = "true"
    target_modules: list[str] = field(default_factory=lambda: list(ROLES))
    modules_to_save: Optional[list[str]] = None


@dataclass
class DataConfig:
    source: Any = MISSING
    subset: Optional[str] = None
    split: str = "train"
    format: str = "auto"
    columns: Any = None
    loss_on: str = "responses"
    val_size: float = 0.0
    eval_source: Any = None
    max_samples: Optional[int] = None
    max_length: Optional[int] = None
    overlength: str = "drop"
    packing: bool = False
    cache: bool = True
    preview_samples: int = 3


@dataclass
class TrainerConfig:
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 2
    gradient_accumulation_steps: int = 4
    warmup_steps: float = 0.03
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.01
    optim: str = "auto"
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    logging_steps: int = 1
    eval_steps: Optional[int] = None
    save_steps: int = 100
    save_total_limit: Optional[int] = 2


@dataclass
class LoggerConfig:
    kind: str = "none"
    project: str = "llm-finetune"
    entity: Optional[str] = None
    mode: str = "auto"
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    name: Optional[str] = None
    seed: int = 3407
    backend: str = "unsloth"


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore: `train.yaml` extends `schema`, each group file extends its node."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=TrainConfig)
    for group, node in [("model", ModelConfig), ("quantization", QuantizationConfig), ("lora", LoraConfig),
                        ("data", DataConfig), ("trainer", TrainerConfig), ("logger", LoggerConfig)]:
        cs.store(group=group, name=f"{group}_schema", node=node)


def _nested_schema(field: dataclasses.Field) -> Any:
    """The dataclass type a field holds, or None for a plain value."""
    if field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return None
    value = field.default_factory()  # type: ignore[misc]
    return type(value) if dataclasses.is_dataclass(value) else None


def field_names(dotted_parent: str) -> list[str]:
    """The keys the schema allows under a dotted parent, for 'did you mean' hints."""
    node: Any = TrainConfig
    for part in filter(None, dotted_parent.split(".")):
        fields = {f.name: f for f in dataclasses.fields(node)}
        node = _nested_schema(fields[part]) if part in fields else None
        if node is None:
            return []
    return [f.name for f in dataclasses.fields(node)]


def suggest_key(parent: str, name: str) -> str:
    """A 'did you mean' for an unknown key: a known synonym, a near spelling, or the same name in another group."""
    here = field_names(parent)
    prefix = f"{parent}." if parent else ""
    wanted = KEY_SYNONYMS.get(name, name)
    if wanted in here:
        return f"did you mean '{prefix}{wanted}'?"
    groups = [g for g in field_names("") if field_names(g)]
    for group in groups:
        if wanted in field_names(group):
            return f"did you mean '{group}.{wanted}'?"
    return did_you_mean(name, here, prefix=prefix)


def reject_unknown_keys(cfg: Any, schema: Any = TrainConfig, parent: str = "") -> None:
    """Keys added with `+key=value` skip Hydra's struct check; refuse any the schema does not know."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in cfg:
        dotted = f"{parent}.{key}" if parent else str(key)
        if key not in fields:
            raise ConfigError(dotted, "unknown key", suggest_key(parent, str(key)) or "remove it")
        nested = _nested_schema(fields[key])
        if nested is not None:
            reject_unknown_keys(cfg[key], nested, dotted)


# --- semantic checks: values that type-check but make no sense ------------------------------------------------

CHOICES: dict[str, tuple] = {
    "backend": ("unsloth", "hf"),
    "model.dtype": ("auto", "bfloat16", "float16", "float32"),
    "quantization.bits": (4, 8, 16),
    "quantization.quant_type": ("nf4", "fp4"),
    "quantization.compute_dtype": ("auto", "bfloat16", "float16", "float32"),
    "lora.bias": ("none", "all", "lora_only"),
    "lora.init_weights": ("true", "false", "gaussian", "loftq", "corda", "pissa", "olora"),
    "data.format": ("auto", "messages", "alpaca", "sharegpt", "text", "prompt_completion"),
    "data.loss_on": ("responses", "all"),
    "data.overlength": ("drop", "truncate", "raise"),
    "trainer.lr_scheduler_type": ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                  "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
                                  "cosine_with_min_lr", "warmup_stable_decay"),
    "trainer.optim": ("auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit",
                      "paged_adamw_32bit", "adafactor", "sgd", "lion_8bit", "paged_lion_8bit"),
    "logger.kind": ("wandb", "none"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
}

# (key, predicate, what must hold, a valid example) — the predicate gets the value.
RANGES: list[tuple[str, Callable[[Any], bool], str, str]] = [
    ("model.max_seq_length", lambda v: v >= 8, "must be at least 8", "2048"),
    ("lora.r", lambda v: v >= 1, "must be a positive integer", "16 (typical: 8 to 64)"),
    ("lora.alpha", lambda v: v >= 1, "must be a positive integer", "16 (usually r or 2 * r)"),
    ("lora.dropout", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", "0.0 (keeps Unsloth's fast path) or 0.05"),
    ("lora.target_modules", lambda v: len(v) > 0, "must name at least one module or role", "[q,k,v,o]"),
    ("data.val_size", lambda v: v >= 0, "must be 0, a fraction in (0, 1) or a count", "0.1"),
    ("data.max_samples", lambda v: v is None or v >= 1, "must be null or at least 1", "1000"),
    ("data.max_length", lambda v: v is None or v >= 8, "must be null (the model's max_seq_length) or >= 8", "2048"),
    ("data.preview_samples", lambda v: v >= 0, "must be >= 0", "3"),
    ("trainer.learning_rate", lambda v: 0 < v < 1, "must be in (0, 1)", "2e-4"),
    ("trainer.num_train_epochs", lambda v: v > 0, "must be positive", "1"),
    ("trainer.max_steps", lambda v: v == -1 or v >= 1, "must be -1 (use epochs) or at least 1", "100"),
    ("trainer.per_device_train_batch_size", lambda v: v >= 1, "must be at least 1", "2"),
    ("trainer.per_device_eval_batch_size", lambda v: v >= 1, "must be at least 1", "2"),
    ("trainer.gradient_accumulation_steps", lambda v: v >= 1, "must be at least 1", "4"),
    ("trainer.warmup_steps", lambda v: v >= 0, "must be >= 0 (a fraction of all steps when < 1)", "0.03"),
    ("trainer.weight_decay", lambda v: v >= 0, "must be >= 0", "0.01"),
    ("trainer.max_grad_norm", lambda v: v >= 0, "must be >= 0 (0 turns clipping off)", "1.0"),
    ("trainer.logging_steps", lambda v: v >= 1, "must be at least 1", "10"),
    ("trainer.eval_steps", lambda v: v is None or v >= 1, "must be null (once per epoch) or at least 1", "50"),
    ("trainer.save_steps", lambda v: v >= 1, "must be at least 1", "100"),
    ("trainer.save_total_limit", lambda v: v is None or v >= 1, "must be null (keep all) or at least 1", "2"),
]

# Names people bring from PEFT, Unsloth, axolotl or transformers -> ours.
KEY_SYNONYMS = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "rslora": "use_rslora",
    "lr": "learning_rate", "epochs": "num_train_epochs", "num_epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size", "micro_batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "gradient_accumulation": "gradient_accumulation_steps",
    "warmup_ratio": "warmup_steps", "scheduler": "lr_scheduler_type", "optimizer": "optim",
    "max_length": "max_seq_length", "sequence_len": "max_seq_length", "model_name": "name", "path": "source",
    "dataset": "source", "type": "format", "target": "target_modules", "targets": "target_modules",
}


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that type-checks but cannot work."""
    reject_unknown_keys(cfg)
    for key, choices in CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(key, f"'{value}' is not allowed", did_you_mean(str(value), map(str, choices)))
    for key, holds, must, example in RANGES:
        value = _get(cfg, key)
        if not holds(value):
            raise ConfigError(key, f"{value} is out of range: {must}", f"Use e.g. {key}={example}")
    for key in ("model.name", "data.source"):
        if OmegaConf.is_missing(cfg, key) or _get(cfg, key) in (None, "", []):
            raise ConfigError(key, "is not set", f"pick a preset ({key.split('.')[0]}=...) or give {key}=...")
    _validate_combinations(cfg)


UNSLOTH_MODULES_TO_SAVE = ("lm_head", "embed_tokens")  # FastLanguageModel.get_peft_model's allow-list (+ norms)


def _validate_combinations(cfg: DictConfig) -> None:
    if cfg.backend == "unsloth":
        for module in cfg.lora.modules_to_save or []:
            if module.rsplit(".", 1)[-1] not in UNSLOTH_MODULES_TO_SAVE and "norm" not in module:
                raise ConfigError("lora.modules_to_save", f"'{module}' cannot be trained in full by Unsloth "
                                  "(only lm_head, embed_tokens and norm layers)", "use backend=hf to train it in full")
    if cfg.data.max_length is not None and cfg.data.max_length > cfg.model.max_seq_length:
        raise ConfigError("data.max_length", f"{cfg.data.max_length} is above model.max_seq_length "
                          f"({cfg.model.max_seq_length})", "lower data.max_length or raise model.max_seq_length")
    columns = cfg.data.columns
    if columns is not None and not (isinstance(columns, DictConfig)
                                    and all(isinstance(v, str) for v in columns.values())):
        raise ConfigError("data.columns", f"{columns} is not a mapping of column names",
                          "write it as data.columns={instruction: question, output: answer} (format name: yours)")
    if cfg.data.eval_source not in (None, "", []) and cfg.data.val_size:
        raise ConfigError("data.val_size", f"{cfg.data.val_size} is set together with data.eval_source",
                          "set data.val_size=0 to evaluate on data.eval_source, or drop data.eval_source")
    if cfg.data.val_size >= 1 and cfg.data.val_size != int(cfg.data.val_size):
        raise ConfigError("data.val_size", f"{cfg.data.val_size} is neither a fraction below 1 nor a whole count",
                          "give a fraction like 0.1 or a count like 50")


def to_runconfig(cfg: DictConfig) -> TrainConfig:
    """Validate and convert the composed config to typed dataclasses (what the rest of the pipeline sees)."""
    validate(cfg)
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, TrainConfig)
    return run


def to_plain_dict(cfg: DictConfig | TrainConfig) -> dict:
    """A resolved, JSON-safe dict of the config with secrets removed (for files and W&B)."""
    node = OmegaConf.structured(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return redact_secrets(OmegaConf.to_container(node, resolve=True, throw_on_missing=False))


SECRET_WORDS = ("token", "api_key", "apikey", "password", "secret")


def redact_secrets(value: Any) -> Any:
    """Drop any key that looks like a credential, at any depth."""
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items()
                if not any(word in str(k).lower() for word in SECRET_WORDS)}
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value


def _repo_path(relative: str) -> str:
    """Absolute path of a file shipped in this repository, wherever the command runs from."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent / relative)


def register_resolvers() -> None:
    """`${pipeline.repo_path:x}` for shipped assets; `${pipeline.suffix:name}` gives '_name' or ''."""
    if not OmegaConf.has_resolver("pipeline.repo_path"):
        OmegaConf.register_new_resolver("pipeline.repo_path", _repo_path)
        OmegaConf.register_new_resolver("pipeline.suffix", lambda name: f"_{name}" if name else "")


def preset_roles() -> dict[str, list[str]]:
    """Every preset in conf/lora/target_modules/, name -> roles."""
    from pathlib import Path

    folder = Path(_repo_path("conf/lora/target_modules"))
    return {p.stem: list(OmegaConf.load(p).target_modules) for p in sorted(folder.glob("*.yaml"))}


def preset_label(requested: list[str], choice: Optional[str]) -> str:
    """The chosen preset's name, or 'custom' when lora.target_modules was given explicitly."""
    presets = preset_roles()
    return choice if choice in presets and presets[choice] == list(requested) else "custom"


def architecture_applies(run: Any, model_choice: Optional[str]) -> bool:
    """A preset's architecture numbers describe the preset's own model: not one named by a model.name override."""
    if model_choice is None:
        return True  # composed without Hydra's choices (tests, API): trust the config as given
    from pathlib import Path

    path = Path(_repo_path("conf/model")) / f"{model_choice}.yaml"
    if not path.is_file():
        return False
    preset = OmegaConf.load(path)
    return OmegaConf.to_container(OmegaConf.create({"name": preset.name}), resolve=True)["name"] == run.model.name
