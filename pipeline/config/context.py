"""What a run knows about itself beyond its config: where it writes, which presets Hydra chose, its sweep.

Preset contents are read back through Hydra (compose), never from `conf/` files directly, so presets that live in a
user's own config directory (`hydra.searchpath`) or in `conf/local/` behave exactly like shipped ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

TARGETS_GROUP = "lora/target_modules"


@dataclass(frozen=True)
class RunContext:
    run_dir: Path
    choices: dict[str, Optional[str]] = field(default_factory=dict)  # Hydra's group choices, e.g. model -> tiny
    overrides: tuple[str, ...] = ()                                   # the command line's overrides
    multirun: bool = False
    job_num: Optional[int] = None
    sweep_dir: Optional[str] = None
    preset: str = "custom"             # the target-module preset, or custom for literal names
    architecture_applies: bool = True  # the model preset's architecture numbers describe model.name
    notes: tuple[str, ...] = ()        # what the command changed about the environment (e.g. went offline)
    hydra_files: tuple[tuple[str, str], ...] = ()  # .hydra/ (name, YAML), written once the run directory is ours
    rank: int = 0                      # this process in a torchrun / accelerate launch (0: the one that writes)
    world_size: int = 1                # processes in the launch

    @property
    def main_process(self) -> bool:
        """Rank 0 alone writes the run directory, the data cache, the console summary and W&B."""
        return self.rank == 0

    @property
    def model_choice(self) -> Optional[str]:
        return self.choices.get("model")


def from_hydra(run: Any) -> RunContext:
    """The context of the running Hydra job (a bare one, in the current directory, outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pipeline.config import launch

    if not HydraConfig.initialized():
        return RunContext(run_dir=Path.cwd(), rank=launch.rank(), world_size=launch.world_size())
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    choices = dict(hc.runtime.choices)
    overrides = tuple(hc.overrides.task)
    refuse_a_list_of_presets(overrides)
    return RunContext(
        run_dir=Path(hc.runtime.output_dir), choices=choices, overrides=overrides, multirun=multirun,
        job_num=hc.job.num if multirun else None, sweep_dir=hc.sweep.dir if multirun else None,
        preset=preset_label(run.lora.target_modules, choices.get(TARGETS_GROUP)),
        # numbers copied from a preset's config.json do not describe another model named on the command line
        architecture_applies=not any(o.lstrip("+~").startswith("model.name=") for o in overrides),
        rank=launch.rank(), world_size=launch.world_size())


def preset_roles(option: str) -> list[str]:
    """The roles a target-module preset names, as Hydra composes it (wherever the preset file lives)."""
    from hydra import compose

    # the preset's group alone (a third of the time of composing the whole train config)
    return list(compose(config_name=None, overrides=[f"+{TARGETS_GROUP}={option}", *searchpath_override()])
                .lora.target_modules)


def searchpath_override() -> list[str]:
    """The running job's `hydra.searchpath`, which a compose call inside it does not inherit by itself."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not HydraConfig.get().searchpath:
        return []
    return [f"hydra.searchpath=[{','.join(HydraConfig.get().searchpath)}]"]


def target_presets() -> dict[str, list[str]]:
    """Every target-module preset Hydra can see (shipped, searchpath, conf/local): name -> roles."""
    from hydra.core.global_hydra import GlobalHydra

    options = GlobalHydra.instance().config_loader().get_group_options(
        TARGETS_GROUP, config_name="train", overrides=searchpath_override())
    return {option: preset_roles(option) for option in sorted(options)}


def refuse_a_list_of_presets(overrides: tuple[str, ...]) -> None:
    """`lora/target_modules=[attention,mlp]`: Hydra merges the presets and the last one's list replaces the others',
    so only the last would be adapted. Refused, with the union of their roles to give instead."""
    from pipeline.errors import ConfigError

    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") != TARGETS_GROUP or not value.strip().startswith("["):
            continue
        presets = [p.strip() for p in value.strip()[1:-1].split(",") if p.strip()]
        try:
            union = list(dict.fromkeys(role for preset in presets for role in preset_roles(preset)))
        except Exception:  # noqa: BLE001 - an unknown preset name: Hydra has already said which
            union = []
        instead = f"lora.target_modules=[{','.join(union)}]" if union else "lora.target_modules=[...]"
        raise ConfigError(TARGETS_GROUP, f"{value} merges presets, and the last one's list replaces the others' "
                          f"(only {presets[-1] if presets else 'the last'} would be adapted)",
                          f"give one preset, or all their roles: '{instead}'")


def preset_label(requested: list[str], choice: Optional[str]) -> str:
    """The chosen preset's name, or 'custom' when lora.target_modules was given explicitly."""
    from hydra.core.global_hydra import GlobalHydra

    if choice is None or not GlobalHydra.instance().is_initialized():
        return "custom"
    return choice if preset_roles(choice) == list(requested) else "custom"
