"""What a run leaves in its directory: config.resolved.yaml, metrics.jsonl, summary.json, loss.png."""

from __future__ import annotations

import json
import math
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo", "datasets",
            "hydra-core", "wandb")


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON object per logged step (loss, lr, grad_norm, eval_loss, ...) to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch,
               **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def write_resolved_config(run_dir: Path, config: dict) -> None:
    from omegaconf import OmegaConf

    (run_dir / "config.resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def peak_memory_mb(device: str) -> float:
    """Peak accelerator memory on GPU; peak resident memory of this process on CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loss_values(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]


def write_summary(run_dir: Path, summary: dict) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    tmp.replace(run_dir / "summary.json")  # atomic: never a half-written summary


def plot_loss(run_dir: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("eval_loss", "o--")):
        points = loss_values(rows, key)
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key.replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
