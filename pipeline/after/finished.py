"""A finished run, read back from its directory: its config as it trained, its summary, its adapter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, first_line


@dataclass(frozen=True)
class FinishedRun:
    path: Path
    config: Any          # TrainConfig, as config.resolved.yaml recorded it
    summary: dict
    unquantized_base: str | None = None  # the after commands' `unquantized_base=`

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    def base_16bit(self) -> tuple[str, str | None]:
        """(name, revision) of the unquantized base to merge into or answer with: model.name, or for a pre-quantized
        model.name (`*-bnb-4bit`, or a checkpoint whose config declares a quantization) its 16-bit original:
        `unquantized_base=`, else the one Unsloth's name tables give; one line naming the key when neither knows."""
        from pipeline.compat import unsloth_16bit_name
        from pipeline.model.loaded import checkpoint_quantization

        model = self.config.model
        quantized = model.name.lower().endswith("bnb-4bit") or checkpoint_quantization(model.name) is not None
        if not quantized:
            if self.unquantized_base:
                raise ConfigError("unquantized_base", f"model.name {model.name} is not pre-quantized: its own "
                                  "weights are the 16-bit base", "leave unquantized_base out")
            return model.name, model.revision
        found = self.unquantized_base or unsloth_16bit_name(model.name)
        if found is None:
            raise ConfigError("unquantized_base", f"model.name {model.name} is a pre-quantized 4-bit checkpoint "
                              "(merging into it, or answering with it as '16-bit', would use its 4-bit weights) and "
                              "Unsloth's name tables do not know its 16-bit original",
                              "give it: unquantized_base=<hub id or folder of the 16-bit model>")
        return found, None


def open_finished_run(run: str | None, unquantized_base: str | None = None) -> FinishedRun:
    """The completed run in `run`; one line naming `run` when it is not one."""
    if not run:
        raise ConfigError("run", "no run directory given", "give run=<run dir>, e.g. run=outputs/<date>/<time>_<name>")
    path = Path(run).expanduser().resolve()
    if path.is_file():
        raise ConfigError("run", f"{run} is a file, not a run directory",
                          "give the run's directory (the one holding summary.json and adapter/)")
    summary_file, config_file = path / "summary.json", path / "config.resolved.yaml"
    if not summary_file.is_file() or not config_file.is_file():
        raise ConfigError("run", f"{run} is not a run directory (no summary.json and config.resolved.yaml)",
                          "give the directory a train run wrote")
    summary = read_json(summary_file)
    if summary.get("status") != "completed" or not (path / "adapter" / "adapter_config.json").is_file():
        raise ConfigError("run", f"{run} holds no completed run (status: {summary.get('status')}) and no final "
                          "adapter", "finish it first (resume=auto), or give a completed run")
    check_adapter_files(path / "adapter")
    config = _train_config(config_file)
    name = str(config.model.name)
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ConfigError("run", f"the run's base model {name} is not there (model.name in {config_file})",
                          "put the base model back there, or correct model.name in that file")
    return FinishedRun(path, config, summary, unquantized_base)


DAMAGED_FIX = "restore it from a copy, or train the run again"


def read_json(path: Path) -> dict:
    """A run's JSON file; a damaged one (cut short, edited, binary) is named in one line."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError("run", f"{path} is damaged (not valid JSON: {first_line(error)})", DAMAGED_FIX) from error
    if not isinstance(value, dict):
        raise ConfigError("run", f"{path} is damaged (not a JSON object)", DAMAGED_FIX)
    return value


def check_adapter_files(adapter: Path) -> None:
    """The adapter's config reads as JSON and its weights file is there with a readable header."""
    from safetensors import safe_open

    read_json(adapter / "adapter_config.json")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConfigError("run", f"{weights} is missing: the run's adapter has no weights", DAMAGED_FIX)
    try:
        with safe_open(str(weights), framework="pt") as opened:
            opened.keys()
    except Exception as error:  # noqa: BLE001 - safetensors' own error types for a cut or foreign file
        raise ConfigError("run", f"{weights} is damaged ({first_line(error)})", DAMAGED_FIX) from error


def check_merged_export(path: Path, run_path: Path, key: str) -> None:
    """The merged export is there, with its weights (not deleted or half-copied since `export` verified it)."""
    if not (path / "config.json").is_file():
        raise ConfigError(key, f"there is no merged export in {path}",
                          f"write it first: python -m pipeline.export run={run_path}")
    if not any(path.glob("*.safetensors")):
        raise ConfigError(key, f"the merged export in {path} has no weights (model*.safetensors)",
                          f"write it again: python -m pipeline.export run={run_path}")


def load_adapter(base: Any, run: FinishedRun) -> Any:
    """The run's adapter on `base` (PEFT); one whose shapes do not fit the base (edited, or trained on another
    model) is named in one line."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, run.adapter).eval()
    except RuntimeError as error:
        if "size mismatch" not in str(error):
            raise
        raise ConfigError("run", f"{run.adapter} does not fit the base {run.config.model.name} ({first_line(error)})",
                          "the adapter was edited or trained on another model: " + DAMAGED_FIX) from error


def _train_config(config_file: Path) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    from pipeline.config.schema import TrainConfig

    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(config_file))
        return OmegaConf.to_object(merged)
    except (YAMLError, OmegaConfBaseException, UnicodeDecodeError, ValueError) as error:
        raise ConfigError("run", f"{config_file} is damaged ({first_line(error)})", DAMAGED_FIX) from error
