"""What the pipeline costs over the libraries it drives: `pipeline.train` against hand-written scripts doing the
identical work, timed side by side in one run.

Run: .venv/bin/python benchmarks/overhead.py [--rounds 3] [--steps 60] [--cases hf,unsloth,trl-cli]

The work: the quickstart's QLoRA fine-tune of the tiny model (NF4, all seven projections, r=16, same data, seed,
optimizer and schedule, checkpoints every 10 steps), `steps` steps, no evaluation. Each case alternates the two
commands `rounds` times (so a slow minute hurts both) and prints medians: wall time of the whole process (start-up,
imports, data, training, saving) and its peak RSS, as ratios ours/theirs. For the hand-written scripts
(benchmarks/baselines/) it also checks that the two loss curves are identical step for step. `trl-cli` is TRL's own
`trl sft --config` on the same work (its loss curve differs: it sets the model up its own way).
Every process runs with HF_HUB_OFFLINE=1 and a fresh data cache, so nothing waits on the network or reuses a
previous run's tokenization.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PIPELINE_ARGS = ["experiment=quickstart", "logger=none", "data.val_size=0", "trainer.logging_steps=1",
                 "eval.before_after=false"]


@dataclass
class Measured:
    wall_s: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    losses: list[float] | None = None


def run(command: list[str], work: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one process, started fresh."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FT_DATA_CACHE": str(work / "data-cache"),
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS (ru_maxrss: KiB on Linux)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(command)}")
    return wall, usage.ru_maxrss / 1024, stdout


def pipeline_command(backend: str, steps: int, work: Path) -> list[str]:
    return [PYTHON, "-m", "pipeline.train", *PIPELINE_ARGS, f"backend={backend}", f"trainer.max_steps={steps}",
            f"hydra.run.dir={work / 'run'}"]


def pipeline_losses(work: Path) -> list[float]:
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    return [round(row["loss"], 6) for row in rows if "loss" in row]


def script_command(name: str, steps: int, work: Path) -> list[str]:
    return [PYTHON, str(REPO / "benchmarks" / "baselines" / name), str(work / "out"), str(steps)]


def trl_cli_command(steps: int, work: Path) -> list[str]:
    """`trl sft --config` on the same work: its YAML written the way TRL's docs show."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "assets" / "data" / "tiny_messages.jsonl", data / "train.jsonl")
    settings = {
        "model_name_or_path": "assets/tiny-llama", "dataset_name": str(data), "dtype": "float32",
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True,
        "use_peft": True, "lora_r": 16, "lora_alpha": 16, "lora_dropout": 0.0,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "output_dir": str(work / "out"), "learning_rate": 5.0e-3, "max_steps": steps,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "warmup_steps": 0.1,
        "lr_scheduler_type": "linear", "weight_decay": 0.01, "optim": "adamw_torch", "logging_steps": 1,
        "save_steps": 10, "save_total_limit": 2, "seed": 3407, "bf16": False, "report_to": "none",
        "max_length": 256, "assistant_only_loss": True, "gradient_checkpointing": True,
    }
    config = work / "sft.yaml"
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return [str(Path(PYTHON).parent / "trl"), "sft", "--config", str(config)]


CASES = {  # name: (our backend, their command, whether their loss curve must equal ours)
    "hf": ("hf", lambda steps, work: script_command("hf_qlora.py", steps, work), True),
    "unsloth": ("unsloth", lambda steps, work: script_command("unsloth_qlora.py", steps, work), True),
    "trl-cli": ("hf", trl_cli_command, False),
}


def measure(case: str, rounds: int, steps: int, scratch: Path) -> tuple[Measured, Measured, bool]:
    backend, theirs_command, same_curve = CASES[case]
    ours, theirs = Measured(), Measured()
    for round_ in range(rounds):
        for who, measured in (("ours", ours), ("theirs", theirs)):
            work = scratch / f"{case}-{who}-{round_}"
            command = pipeline_command(backend, steps, work) if who == "ours" else theirs_command(steps, work)
            wall, rss, stdout = run(command, work)
            measured.wall_s.append(wall)
            measured.rss_mib.append(rss)
            if who == "ours":
                measured.losses = pipeline_losses(work)
            elif same_curve:
                measured.losses = json.loads(stdout.strip().splitlines()[-1])["losses"]
            shutil.rmtree(work, ignore_errors=True)
            print(f"  {case} {who} round {round_ + 1}: {wall:.2f} s, {rss:.0f} MiB", flush=True)
    return ours, theirs, (ours.losses == theirs.losses) if same_curve else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cases", default="hf,unsloth,trl-cli")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as scratch:
        for case in args.cases.split(","):
            ours, theirs, same = measure(case, args.rounds, args.steps, Path(scratch))
            rows.append((case, ours, theirs, same))
    print(f"\n{args.steps} steps, median of {args.rounds} alternating runs each (ours = pipeline.train)")
    print(f"{'against':<10} {'ours s':>7} {'theirs s':>8} {'wall':>6} {'ours MiB':>8} {'theirs MiB':>10} {'RSS':>6}"
          f"  loss curves")
    for case, ours, theirs, same in rows:
        wall = (statistics.median(ours.wall_s), statistics.median(theirs.wall_s))
        rss = (statistics.median(ours.rss_mib), statistics.median(theirs.rss_mib))
        curve = "not compared" if same is None else ("identical" if same else "DIFFERENT")
        print(f"{case:<10} {wall[0]:>7.2f} {wall[1]:>8.2f} {wall[0] / wall[1]:>5.3f}x {rss[0]:>8.0f} {rss[1]:>10.0f} "
              f"{rss[0] / rss[1]:>5.3f}x  {curve}")
    if any(same is False for *_, same in rows):
        raise SystemExit("the loss curves differ: the two commands do not do the same work")


if __name__ == "__main__":
    main()
