"""OmegaConf resolvers the config tree uses: `${pipeline.repo_path:x}`, `${pipeline.suffix:name}`,
`${pipeline.latest_run:name}`, and the launch's `${pipeline.launch_time:fmt}` and `${pipeline.main_process_file:path}`
(pipeline.config.launch)."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config.launch import launch_time, main_process_file
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
UNSAFE_IN_NAME = re.compile(r"[^\w.+-]")  # what `name` may not hold (the schema refuses it)


def after_dir(run: str | None) -> str:
    """The run directory a command on a finished run logs into: the run's own (a file there is no run)."""
    if run and Path(str(run)).expanduser().is_file():
        raise ConfigError("run", f"{run} is a file, not a run directory",
                          "give the run's directory (the one holding summary.json and adapter/)")
    return run or "outputs/no-run"


def repo_path(relative: str) -> str:
    """Absolute path of a file shipped in this repository, wherever the command runs from."""
    return str(REPO / relative)


def run_dir_suffix(name: str | None) -> str:
    """'_<name>' for the run directory, '' without a name. Hydra makes the directory before `name` is validated, so
    a name with a path in it (`/../x`) is flattened here, and the refused run leaves no directory outside outputs/."""
    return "_" + UNSAFE_IN_NAME.sub("-", str(name)) if name else ""


def latest_run(name: str) -> str:
    """The newest completed run called `name` under outputs/ (where runs go by default), for an experiment that
    continues one (quickstart_dpo: init_from); one line when there is none."""
    import json


    for run in sorted(Path("outputs").glob(f"*/*_{name}"), reverse=True):
        summary = run / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
            return str(run.resolve())
    raise ConfigError("init_from", f"no completed '{name}' run under outputs/ to continue",
                      f"train one first (python -m pipeline.train experiment={name}), or give "
                      "init_from=<a run directory>")


def user_groups() -> str:
    """One line per config group with the options a user can pick (for `--help`; the schema nodes left out)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()

    def groups(parent: str) -> list[str]:
        found = []
        for name in loader.list_groups(parent):
            group = f"{parent}/{name}" if parent else name
            if group != "hydra":
                found += [group, *groups(group)]
        return found

    lines = []
    for group in sorted(groups("")):
        options = [o for o in loader.get_group_options(group) if not o.endswith("_schema")]
        if options:
            lines.append(f"  {group}: {', '.join(options)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """`${pipeline.repo_path:x}` for shipped assets; `${pipeline.suffix:name}` gives '_name' or ''; the groups for
    `--help`; the run directory's time and the log file, the same for every process of a launch."""
    if not OmegaConf.has_resolver("pipeline.repo_path"):
        OmegaConf.register_new_resolver("pipeline.repo_path", repo_path)
        OmegaConf.register_new_resolver("pipeline.suffix", run_dir_suffix)
        OmegaConf.register_new_resolver("pipeline.user_groups", user_groups)
        OmegaConf.register_new_resolver("pipeline.latest_run", latest_run)
        OmegaConf.register_new_resolver("pipeline.after_dir", after_dir)
        # cached like Hydra's `now`: a sweep's jobs in other processes (submitit) get the sweep's own time
        OmegaConf.register_new_resolver("pipeline.launch_time", launch_time, use_cache=True)
        OmegaConf.register_new_resolver("pipeline.main_process_file", main_process_file)
