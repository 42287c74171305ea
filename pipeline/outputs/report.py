"""What a run reports: the facts for summary.json, the console lines, and loss.svg."""

from __future__ import annotations

import logging
import math
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo", "datasets",
            "hydra-core", "wandb")


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


def reset_peaks(device: str) -> None:
    """Start a run's GPU peaks from now: jobs of a sweep run one after another in one process."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def gpu_peaks_mb(device: str) -> dict[str, float]:
    """On a GPU, the peaks of memory in tensors (allocated) and of memory PyTorch's caching allocator took from the
    GPU (reserved: what must fit; nvidia-smi adds the CUDA context). Nothing on CPU."""
    if device != "cuda":
        return {}
    import torch

    return {"peak_memory_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_memory_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)}


def loss_values(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]


def training_facts(state: Any, rows: list[dict], runtime: float, device: str, tokens: Any = None) -> dict:
    """Losses, steps, speed and memory of the run so far (`state`: the trainer's state, None before training;
    `tokens`: the run's TokenCounter, None before training). tokens_per_second counts the whole run (loading the
    model included), train_tokens_per_second the trainer's own train_runtime."""
    losses = loss_values(rows, "loss")
    train_runtime = next((r["train_runtime"] for r in reversed(rows) if "train_runtime" in r), None)
    return {
        "initial_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "global_step": state.global_step if state is not None else 0,
        "runtime_s": round(runtime, 2),
        **(tokens.facts(runtime, train_runtime) if tokens is not None else {"tokens_per_second": None}),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        **gpu_peaks_mb(device),
        "versions": versions(),
        "git_sha": git_sha(),
    }


def print_header(lines: dict[str, Any]) -> None:
    width = max(map(len, lines))
    for key, value in lines.items():
        log.info("%s : %s", key.ljust(width), value)


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(summary: dict, run_dir: Path) -> None:
    print_header({
        "status": summary["status"],
        "loss": f"{_loss(summary.get('initial_loss'))} -> {_loss(summary.get('final_loss'))} "
                f"(eval {_loss(summary.get('eval_loss'))})",
        "steps": f"{summary.get('global_step')} in {summary.get('runtime_s')} s "
                 f"({summary.get('tokens_per_second')} tokens/s)",
        "peak memory": f"{summary.get('peak_memory_mb') or 0:.0f} MB",
        "adapter": str(run_dir / "adapter"),
        "summary": str(run_dir / "summary.json"),
    })
    if summary.get("eval"):
        from pipeline.after.evaluate import describe

        for line in describe(summary["eval"]):
            log.info("%s", line)
    for command in summary.get("next", []):
        log.info("next: %s", command)


def next_commands(run_dir: Path) -> list[str]:
    """What a completed run is for: try it, measure it, export it."""
    return [f'python -m pipeline.generate run={run_dir} prompt="..."', f"python -m pipeline.evaluate run={run_dir}",
            f"python -m pipeline.export run={run_dir}"]


def plot_loss(run_dir: Path, rows: list[dict], title: str) -> None:
    from pipeline.outputs.plot import write_loss_svg

    write_loss_svg(run_dir / "loss.svg", {key: loss_values(rows, key) for key in ("loss", "eval_loss")}, title)


def close_progress_bars(trainer: Any) -> None:
    """A run that stopped mid-step leaves transformers' progress bars open, and they redraw after the error line."""
    for callback in trainer.callback_handler.callbacks if trainer is not None else []:
        for name in ("training_bar", "prediction_bar"):
            bar = getattr(callback, name, None)
            if bar is not None:
                bar.close()
                setattr(callback, name, None)
