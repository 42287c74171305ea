"""`python -m pipeline.plan` (`ft-plan`): price the configured run, and every target-module preset beside it.

Same config tree as train. The model is built on the meta device from the preset's architecture numbers (offline),
so nothing is downloaded and no GPU is needed. Writes plan.json into the run directory.
"""

from __future__ import annotations

import json
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli.common import CONF_DIR, entry, run_command
from pipeline.config.context import RunContext, target_presets
from pipeline.outputs.rundir import write_atomically, write_hydra_files
from pipeline.plan.fit import format_fit
from pipeline.plan.table import format_parts, format_table, plan


def plan_command(run: Any, context: RunContext) -> dict:
    from pipeline.model.loading import check_local_model
    from pipeline.plan.lengths import priced_length

    check_local_model(run.model.name)  # a path that is not there: said before any import
    length = priced_length(run)
    result = plan(run, target_presets(), context.preset, context.architecture_applies, length)
    print_plan(result)
    write_hydra_files(context.run_dir, context.hydra_files)
    write_atomically(context.run_dir / "plan.json", json.dumps(result, indent=2) + "\n")
    print(f"plan written to {context.run_dir / 'plan.json'}")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run_command(cfg, plan_command)


def print_plan(result: dict) -> None:
    s = result["settings"]
    selected = result["presets"][result["selected"]]
    print(f"model {result['model']} ({result['model_type']}), {s['quantization_bits']}-bit base, r={s['r']}, "
          f"batch {s['batch_size']} x {s['priced_length']} tokens, gradient checkpointing "
          f"{'on' if s['gradient_checkpointing'] else 'off'}, {s['optimizer']}")
    print(f"priced at {s['priced_length_reason']}")
    print(format_table(result))
    print(f"\n* selected: {result['selected']}, {selected['total_params']:,} parameters in all; "
          f"VRAM parts (GiB): {format_parts(selected)}")
    print(f"  with gradient checkpointing {'off' if s['gradient_checkpointing'] else 'on'}: "
          f"{selected['vram_gib_checkpointing_flipped']:.2f} GiB")
    for note in selected["notes"]:
        print(f"note: {note}")
    sample = "" if s["sequences_per_sample"] == 1 else f", a sample being {s['sequences_per_sample']} sequences " \
        f"(method={s['method']})"
    print(f"\nwill it fit? the largest micro-batch at {s['priced_length']} tokens (yours: {s['batch_size']}{sample}; ! "
          "where it does not fit), or what a micro-batch of 1 lacks:")
    print(format_fit(result["presets"], result["selected"], s["batch_size"]))


cli = entry(main)


if __name__ == "__main__":
    cli()
