"""Level 1: every option of every group and every experiment composes and validates; YAML fields are documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import CONF, compose, group_options

from pipeline.config import TrainConfig, to_runconfig

GROUPS = ["model", "quantization", "lora", "lora/target_modules", "data", "trainer", "logger"]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    run = to_runconfig(compose(f"{group}={option}"))
    assert isinstance(run, TrainConfig)


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes_and_validates(experiment: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # quickstart_dpo continues the newest completed quickstart run under outputs/: a finished one and a newer
    # failed one here
    monkeypatch.chdir(tmp_path)
    for name, status in (("01-00-00_quickstart", "completed"), ("02-00-00_quickstart", "failed")):
        (tmp_path / "outputs" / "2026-12-06" / name).mkdir(parents=True)
        (tmp_path / "outputs" / "2026-12-06" / name / "summary.json").write_text(json.dumps({"status": status}))
    run = to_runconfig(compose(f"experiment={experiment}"))
    assert run.name == experiment  # each experiment names its runs after itself
    if experiment == "quickstart_dpo":
        assert run.init_from == str(tmp_path / "outputs" / "2026-12-06" / "01-00-00_quickstart")


def test_defaults_are_the_qlora_recipe() -> None:
    run = to_runconfig(compose())
    assert (run.quantization.bits, run.quantization.quant_type, run.quantization.double_quant) == (4, "nf4", True)
    assert (run.lora.r, run.lora.alpha, run.lora.dropout, run.lora.bias) == (16, 16, 0.0, "none")
    assert run.lora.target_modules == ["q", "k", "v", "o", "gate", "up", "down"]
    assert run.trainer.learning_rate == 2e-4
    assert run.backend == "unsloth"


@pytest.mark.parametrize("preset,roles", [("all_linear", ["q", "k", "v", "o", "gate", "up", "down"]),
                                          ("attention", ["q", "k", "v", "o"]), ("minimal", ["q", "v"]),
                                          ("mlp", ["gate", "up", "down"])])
def test_target_module_presets_name_roles(preset: str, roles: list[str]) -> None:
    assert to_runconfig(compose(f"lora/target_modules={preset}")).lora.target_modules == roles


def test_literal_target_modules_override_the_preset() -> None:
    run = to_runconfig(compose("lora.target_modules=[q_proj,v_proj]"))
    assert run.lora.target_modules == ["q_proj", "v_proj"]


def test_experiment_header_is_the_command_that_runs_it() -> None:
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_", path
        assert lines[1].startswith((f"# python -m pipeline.train experiment={path.stem}",
                                    f"# python -m pipeline.train -m experiment={path.stem}")), path


def _field_lines_without_comment(text: str) -> list[str]:
    """Key lines lacking a `#` comment, skipping defaults lists and the copied architecture numbers."""
    missing, skip_indent = [], None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None and indent > skip_indent:
            continue
        skip_indent = None
        if re.match(r"\s*(defaults|architecture):", line) or re.match(r"\s*[\w.]+: [|>]-?\s*(#|$)", line):
            skip_indent = indent  # a defaults list, copied numbers, or a block of text
            if "#" not in line and not re.match(r"\s*(defaults|architecture):", line):
                missing.append(line)
            continue
        if re.match(r"\s*[\w/@.]+:", line) and "#" not in line and not line.rstrip().endswith(":"):
            missing.append(line)
    return missing


def test_every_yaml_field_has_a_comment() -> None:
    missing = {str(p.relative_to(CONF)): _field_lines_without_comment(p.read_text())
               for p in CONF.rglob("*.yaml")}
    assert {k: v for k, v in missing.items() if v} == {}


def test_model_presets_carry_architecture_numbers() -> None:
    for option in group_options("model"):
        arch = to_runconfig(compose(f"model={option}")).model.architecture
        assert {"model_type", "hidden_size", "num_hidden_layers", "vocab_size"} <= set(arch), option


def test_tiny_preset_matches_the_shipped_model() -> None:
    import json

    shipped = json.loads((CONF.parent / "assets/tiny-llama/config.json").read_text())
    arch = to_runconfig(compose("model=tiny")).model.architecture
    assert {k: shipped[k] for k in arch} == dict(arch)


DEFAULT_PRESETS = {"lora": "default", "trainer": "default", "quantization": "nf4", "logger": "wandb"}


@pytest.mark.parametrize("group,option", DEFAULT_PRESETS.items())
def test_default_presets_equal_the_schema(group: str, option: str) -> None:
    """A field's default is defined once: the group's default preset documents it and changes nothing."""
    from omegaconf import OmegaConf

    from pipeline.config.schema import GROUPS

    composed = OmegaConf.to_container(compose(f"{group}={option}")[group])
    assert composed == OmegaConf.to_container(OmegaConf.structured(GROUPS[group]))


@pytest.mark.parametrize("group,option", [(g, o) for g in DEFAULT_PRESETS for o in group_options(g)
                                          if o != DEFAULT_PRESETS[g]])
def test_other_presets_hold_only_their_differences(group: str, option: str) -> None:
    from omegaconf import OmegaConf

    own = {k: v for k, v in OmegaConf.load(CONF / group / f"{option}.yaml").items() if k != "defaults"}
    default = compose(f"{group}={DEFAULT_PRESETS[group]}")[group]
    assert own and all(default[k] != v for k, v in own.items()), own
