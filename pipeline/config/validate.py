"""Validation at the config boundary: unknown keys, allowed values and ranges (from the schema), combinations.

`to_runconfig` is the one way from Hydra's DictConfig to the typed `TrainConfig` everything past it sees.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from pipeline.config.schema import (
    METHOD_FIELDS,
    METHOD_LOSSES,
    AfterConfig,
    MethodConfig,
    SourceConfig,
    TrainConfig,
)
from pipeline.errors import ConfigError, did_you_mean

# axolotl's chat_template dataset keys, which people bring along in data.columns: what they ask is what this pipeline
# does (assistant turns, each with its end-of-turn token), or it is refused by name
AXOLOTL_KEYS = {"roles_to_train": ("assistant",), "train_on_eos": ("turn",)}
ASSISTANT_NAMES = ("assistant", "gpt", "model", "bot", "chatbot")


def check_axolotl_keys(columns: dict) -> None:
    """axolotl's `roles_to_train` and `train_on_eos`: accepted where they ask what the pipeline does (the assistant's
    turns train, each with its end-of-turn token: `[assistant]`, `turn`), else refused naming the key."""
    roles = columns.get("roles_to_train")
    if roles is not None:
        names = [roles] if isinstance(roles, str) else list(roles)
        others = [r for r in names if r not in ASSISTANT_NAMES]
        if not names or others:
            raise ConfigError("data.columns.roles_to_train", f"{names}: only the assistant's turns train here "
                              f"(not {others or 'none'})", "drop it, or train every token with data.loss_on=all")
    eos = columns.get("train_on_eos")
    if eos is not None and eos not in AXOLOTL_KEYS["train_on_eos"]:
        raise ConfigError("data.columns.train_on_eos", f"'{eos}': every trained turn ends with its end-of-turn token "
                          "here (axolotl's 'turn')", "drop it, or use train_on_eos: turn")


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
    if wanted == name and name in here:  # a key of train's config, unknown to the command that was given it
        return (f"'{prefix}{name}' is a training setting; this command works on a trained run with the run's own "
                "config (train again to change it)")
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


def schema_fields(schema: Any = TrainConfig, parent: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every leaf field of the schema with its dotted key."""
    leaves = []
    for f in dataclasses.fields(schema):
        dotted = f"{parent}.{f.name}" if parent else f.name
        nested = _nested_schema(f)
        leaves += schema_fields(nested, dotted) if nested is not None else [(dotted, f)]
    return leaves


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that type-checks but cannot work."""
    validate_values(cfg, TrainConfig)
    check_sources(cfg)
    check_streaming(cfg)
    for key in ("model.name", "data.source"):
        if key == "data.source" and cfg.data.sources:  # several sources replace the one
            continue
        if OmegaConf.is_missing(cfg, key) or OmegaConf.select(cfg, key) in (None, "", []):
            raise ConfigError(key, "is not set", f"pick a preset ({key.split('.')[0]}=...) or give {key}=...")
    _validate_combinations(cfg)


def validate_values(cfg: DictConfig, schema: Any) -> None:
    """Unknown keys, then each field's allowed values and range, as the schema states them."""
    reject_unknown_keys(cfg, schema)
    for key, f in schema_fields(schema):
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(key, f"'{value}' is not allowed", did_you_mean(str(value), map(str, choices)))
        if "check" in f.metadata and not OmegaConf.is_missing(cfg, key):
            holds, must, example = f.metadata["check"]
            if not holds(value):
                raise ConfigError(key, f"{value} is out of range: {must}", f"Use e.g. {key}={example}")


UNSLOTH_MODULES_TO_SAVE = ("lm_head", "embed_tokens")  # FastLanguageModel.get_peft_model's allow-list (+ norms)


def check_sources(cfg: DictConfig) -> None:
    """data.sources: a mapping of names to sources, each entry's keys and values as SourceConfig allows."""
    sources = cfg.data.get("sources")
    if not sources:
        return
    example = "data.sources={chat: {source: a.jsonl}, instruct: {source: b.jsonl, format: alpaca, weight: 0.25}}"
    if not isinstance(sources, DictConfig):
        raise ConfigError("data.sources", f"{sources} is not a mapping of names to sources", f"write it as {example}")
    allowed = {f.name: f for f in dataclasses.fields(SourceConfig)}
    for name, entry in sources.items():
        key = f"data.sources.{name}"
        if not isinstance(entry, DictConfig):
            raise ConfigError(key, f"{entry} is not a source", "write it as {source: <path or hub id>, ...}")
        for field_name in entry:
            if field_name not in allowed:
                raise ConfigError(f"{key}.{field_name}", "unknown key",
                                  did_you_mean(str(field_name), allowed, prefix=f"{key}.") or "remove it")
        if entry.get("source") in (None, "", []):
            raise ConfigError(f"{key}.source", "is not set", f"give {key}.source=<path or hub id>")
        for field_name, f in allowed.items():
            value = entry.get(field_name, f.default)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{key}.{field_name}", f"'{value}' is not allowed",
                                  did_you_mean(str(value), map(str, choices)))
            if "check" in f.metadata and value is not None:
                holds, must, example_value = f.metadata["check"]
                if not isinstance(value, int | float) or not holds(value):
                    raise ConfigError(f"{key}.{field_name}", f"{value} is out of range: {must}",
                                      f"Use e.g. {key}.{field_name}={example_value}")
        if cfg.data.mix == "concat" and entry.get("weight", 1.0) != 1.0:
            raise ConfigError(f"{key}.weight", f"{entry.weight} applies to data.mix=interleave (a sampling "
                              "probability); data.mix=concat takes every sample of every source",
                              "set data.mix=interleave, or drop the weight")
    if cfg.data.mix == "concat" and cfg.data.stopping_strategy != "first_exhausted":
        raise ConfigError("data.stopping_strategy", f"{cfg.data.stopping_strategy} applies to data.mix=interleave; "
                          "data.mix=concat takes every sample of every source", "set data.mix=interleave, or drop it")
    if cfg.get("method") is not None and cfg.method.name != "sft":
        raise ConfigError("data.sources", f"mixes SFT data; method={cfg.method.name} reads one source",
                          "give the preference data as data.source")
    if cfg.data.eval_source not in (None, "", []):
        raise ConfigError("data.eval_source", "is one source, and with data.sources each source holds out its own "
                          "data.val_size", "drop data.eval_source")


def check_streaming(cfg: DictConfig) -> None:
    """data.streaming: what a stream cannot do is refused before anything is read."""
    data = cfg.data
    if not data.streaming:
        return
    if cfg.trainer.max_steps < 1:
        raise ConfigError("trainer.max_steps", "is needed with data.streaming=true (a stream has no length to count "
                          "epochs in)", "set trainer.max_steps=N")
    if data.sources:
        raise ConfigError("data.sources", "cannot be streamed yet (one data.source streams)",
                          "give one data.source, or data.streaming=false")
    if cfg.get("method") is not None and cfg.method.name != "sft":
        raise ConfigError("data.streaming", f"streams SFT data; method={cfg.method.name} reads its pairs whole",
                          "set data.streaming=false")
    if 0 < data.val_size < 1:
        raise ConfigError("data.val_size", f"{data.val_size} is a fraction, and a stream has no length",
                          "give a count of samples to hold out from the stream's head, e.g. data.val_size=50")
    if isinstance(data.columns, DictConfig) and set(data.columns) & {"train", "loss_weight"}:
        raise ConfigError("data.columns", "renames per-message flag keys, which a stream does not yet",
                          "name the keys train / loss_weight in the data, or data.streaming=false")


def check_method(method: Any) -> None:
    """A method's own fields set, and no other method's: a value that would not take effect is refused."""
    reads = METHOD_FIELDS[method.name]
    for f in dataclasses.fields(MethodConfig):
        value = method.get(f.name)
        if f.name == "name" or (value is None and (f.name not in reads or f.name == "max_prompt_length")):
            continue
        if f.name not in reads:
            users = [m for m, fields in METHOD_FIELDS.items() if f.name in fields]
            raise ConfigError(f"method.{f.name}", f"method={method.name} does not use it (it is read by "
                              f"{', '.join(f'method={m}' for m in users)})", f"remove it, or choose method={users[0]}")
        if value is None:
            raise ConfigError(f"method.{f.name}", f"method={method.name} needs a value", f"set method.{f.name}, or "
                              f"keep conf/method/{method.name}.yaml's")
    losses = METHOD_LOSSES.get(method.name)
    if losses and method.loss_type not in losses:
        raise ConfigError("method.loss_type", f"'{method.loss_type}' is not a loss of method={method.name}",
                          did_you_mean(str(method.loss_type), losses) or f"use one of {', '.join(losses)}")


def _validate_combinations(cfg: DictConfig) -> None:
    if cfg.get("method") is not None:
        check_method(cfg.method)
        if cfg.method.name != "sft" and cfg.data.packing:
            raise ConfigError("data.packing", f"packs SFT samples; method={cfg.method.name} trains on whole "
                              "prompt/answer pairs", "set data.packing=false")
        if cfg.method.name != "sft" and cfg.data.format != "auto":
            raise ConfigError("data.format", f"'{cfg.data.format}' names an SFT format; method={cfg.method.name} tells "
                              "its data's form itself (TRL's and LLaMA-Factory's preference forms)",
                              "set data.format=auto")
        if cfg.method.name == "kto" and cfg.method.loss_type == "kto" and cfg.trainer.per_device_train_batch_size < 2:
            raise ConfigError("trainer.per_device_train_batch_size", "1: KTO estimates its KL term from the other "
                              "answers of a batch, so a batch needs at least 2", "set it to 2 or more (or "
                              "method.loss_type=apo_zero_unpaired)")
        if cfg.method.name != "sft" and cfg.data.loss_on != "responses":
            raise ConfigError("data.loss_on", f"'{cfg.data.loss_on}' applies to method=sft; method="
                              f"{cfg.method.name} scores the answers against each other", "drop it")
    if cfg.backend == "unsloth":
        for module in cfg.lora.modules_to_save or []:
            if module.rsplit(".", 1)[-1] not in UNSLOTH_MODULES_TO_SAVE and "norm" not in module:
                raise ConfigError("lora.modules_to_save", f"'{module}' cannot be trained in full by Unsloth "
                                  "(only lm_head, embed_tokens and norm layers)", "use backend=hf to train it in full")
    if cfg.data.max_length is not None and cfg.data.max_length > cfg.model.max_seq_length:
        raise ConfigError("data.max_length", f"{cfg.data.max_length} is above model.max_seq_length "
                          f"({cfg.model.max_seq_length})", "lower data.max_length or raise model.max_seq_length")
    columns = cfg.data.columns
    if isinstance(columns, DictConfig):
        check_axolotl_keys(columns)
        columns = {k: v for k, v in columns.items() if k not in AXOLOTL_KEYS}
    if columns is not None and not (isinstance(columns, dict | DictConfig)
                                    and all(isinstance(v, str) for v in columns.values())):
        raise ConfigError("data.columns", f"{columns} is not a mapping of column names",
                          "write it as data.columns={instruction: question, output: answer} (format name: yours)")
    if cfg.data.eval_source not in (None, "", []) and cfg.data.val_size:
        raise ConfigError("data.val_size", f"{cfg.data.val_size} is set together with data.eval_source",
                          "set data.val_size=0 to evaluate on data.eval_source, or drop data.eval_source")
    if cfg.get("eval") is not None and cfg.eval.before_after and not cfg.data.val_size \
            and cfg.data.eval_source in (None, "", []):
        raise ConfigError("eval.before_after", "needs a held-out split, and data.val_size is 0 with no "
                          "data.eval_source", "set data.val_size (e.g. 0.1) or data.eval_source, or "
                          "eval.before_after=false")
    if cfg.get("eval") is not None and cfg.eval.lm_eval_tasks:
        raise ConfigError("eval.lm_eval_tasks", "lm-evaluation-harness runs on a merged export, not during train",
                          "train, export, then python -m pipeline.evaluate run=<run dir> eval.lm_eval_tasks=[...]")
    if cfg.data.val_size >= 1 and cfg.data.val_size != int(cfg.data.val_size):
        raise ConfigError("data.val_size", f"{cfg.data.val_size} is neither a fraction below 1 nor a whole count",
                          "give a fraction like 0.1 or a count like 50")


def to_runconfig(cfg: DictConfig) -> TrainConfig:
    """Validate and convert the composed config to typed dataclasses (what the rest of the pipeline sees)."""
    resolve_interpolations(cfg)
    validate(cfg)
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, TrainConfig)
    return run


def to_afterconfig(cfg: DictConfig) -> AfterConfig:
    """The same boundary for the commands that work on a finished run (`conf/after.yaml`)."""
    resolve_interpolations(cfg)
    validate_values(cfg, AfterConfig)
    after = OmegaConf.to_object(cfg)
    assert isinstance(after, AfterConfig)
    return after


def resolve_interpolations(cfg: DictConfig) -> None:
    """Every ${...} resolved now: a broken one is named by its key."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as error:
        cause = error.__cause__ or error.__context__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # a resolver of ours that says what is wrong itself
            raise cause from None
        key = getattr(error, "full_key", None) or "config"
        raise ConfigError(key, f"cannot resolve its interpolation: {str(error).splitlines()[0].rstrip('.')}",
                          "fix the ${...} reference, or quote a literal value") from error
