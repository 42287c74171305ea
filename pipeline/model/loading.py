"""Loading: the tokenizer once (before any weight, for the data), then the weights through the chosen backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, first_line
from pipeline.model.chat_templates import apply_named_chat_template


@contextmanager
def model_load_errors(name: str) -> Iterator[None]:
    """A missing, gated or unreachable model is the user's to fix: one line naming model.name."""
    try:
        yield
    except (OSError, ValueError) as error:
        check_local_model(name)
        raise ConfigError("model.name", f"cannot load '{name}': {first_line(error)}",
                          "check the hub id or local path, network access and HF_TOKEN for gated models") from error


def check_local_model(name: str) -> None:
    """A model.name that is a path must exist (checked before any import: a hub id is tried when loading)."""
    if name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name)):
        raise ConfigError("model.name", f"no such local folder: {name}",
                          "check the path (relative to where you run), or give a hub id")


def load_tokenizer(run: Any) -> Any:
    """The one tokenizer of a run: it tokenizes the data, goes to the trainer and is saved with the adapter."""
    from transformers import AutoTokenizer

    with model_load_errors(run.model.name):
        tokenizer = AutoTokenizer.from_pretrained(run.model.name, revision=run.model.revision,
                                                  trust_remote_code=run.model.trust_remote_code,
                                                  model_max_length=run.model.max_seq_length)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions never carry loss (labels -100)
    return apply_named_chat_template(tokenizer, run.model.chat_template, run.backend)


def load_model(backend: Any, run: Any, precision: Any) -> Any:
    """The base model under the configured quantization."""
    from pipeline.outputs.logs import prints_to_log

    with model_load_errors(run.model.name), prints_to_log(run.backend):  # Unsloth prints what it loaded
        return backend.load(run, precision)


def loaded_from_notes(run: Any, loaded: dict) -> list[str]:
    """A line when the weights came from another repo than model.name (Unsloth's pre-quantized copies), and when
    model.name is itself pre-quantized with no known 16-bit original (the after commands will ask for it)."""
    from pipeline.compat import unsloth_16bit_name

    notes, repo, name = [], loaded.get("repo"), run.model.name
    same = not repo or repo == name or Path(repo).resolve() == Path(name).resolve()
    if not same:
        notes.append(f"model.name={name} was loaded from {repo} (Unsloth's pre-quantized copy: its own quantization "
                     "applies, some layers may stay 16-bit); set model.revision or quantization.* to load the repo "
                     "itself")
    prequantized = name.lower().endswith("bnb-4bit") or (same and loaded.get("checkpoint_quantization_config"))
    if prequantized and unsloth_16bit_name(name) is None:
        notes.append(f"model.name={name} is pre-quantized and Unsloth's name tables do not know its 16-bit "
                     "original: export and generate.base=16bit will ask for it (unquantized_base=<16-bit model>)")
    return notes
