"""What a sweep answers: one row per job (its overrides, status, preset and rank, what it cost and what it reached),
written into the sweep directory as sweep_summary.csv / .md and sweep.png, and printed when the sweep ends.

Rows are read from the job directories themselves (summary.json, config.resolved.yaml, .hydra/overrides.yaml), so
`python -m pipeline.summarize <sweep dir>` rebuilds the same table for a sweep still running or run elsewhere.
Jobs that failed before they had a run directory (a config error) are known from `jobs.jsonl`, which the callback
appends to as each job ends. The files are rewritten after every job: Hydra skips `on_multirun_end` when a job failed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.errors import SWEEP_END
from pipeline.outputs.rundir import write_atomically

log = logging.getLogger(__name__)
JOBS_FILE = "jobs.jsonl"
COLUMNS = ("job", "overrides", "status", "preset", "r", "trainable_params", "initial_loss", "final_loss", "eval_loss",
           "exact_match", "runtime_s", "tokens_per_second", "peak_memory_mb", "plan_vram_gib", "error")


class SweepSummary(Callback):
    """Hydra callback: record each job as it ends; summarize the sweep when it ends."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        record = {"job": int(config.hydra.job.num), "overrides": list(job_return.overrides),
                  "run_dir": str(config.hydra.runtime.output_dir), "status": "completed", "error": None}
        if job_return.status == JobStatus.FAILED:
            from pipeline.compat import hydra_job_error
            from pipeline.errors import first_line, to_config_error

            ex = hydra_job_error(job_return)
            error = to_config_error(ex)
            record.update(status="failed", error=error.line() if error is not None else f"error: {first_line(ex)}")
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with (sweep_dir / JOBS_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        write(sweep_dir, collect(sweep_dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # in the process that runs the sweep (jobs may run in others): Hydra skips on_multirun_end after a failed job
        sweep_dir, logger = Path(config.hydra.sweep.dir), config.get("logger")
        SWEEP_END[:] = [lambda: finish(sweep_dir, logger)]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SWEEP_END.clear()
        finish(Path(config.hydra.sweep.dir), config.get("logger"))


def finish(sweep_dir: Path, logger: Any) -> None:
    """Once, when the sweep ends: the files, the table printed, and both logged to the sweep's W&B group. Rows are
    read back from the sweep directory, so jobs that ran in other processes (submitit, Optuna) are in it too."""
    from pipeline.errors import first_line
    from pipeline.outputs import tracking

    rows = collect(sweep_dir) if sweep_dir.is_dir() else []
    if not rows:
        return
    write(sweep_dir, rows)
    for line in describe(rows, sweep_dir):
        log.info("%s", line)
    try:
        tracking.publish_sweep(logger, sweep_dir, COLUMNS, rows, best_lines(rows))
    except Exception as error:  # noqa: BLE001 - the summary is written either way; W&B is a copy of it
        log.warning("W&B: the sweep summary was not logged (%s); it is in %s", first_line(error), sweep_dir)


def collect(sweep_dir: Path) -> list[dict]:
    """One row per job, from the jobs' own directories, and from jobs.jsonl for jobs that left none."""
    recorded = {}
    if (sweep_dir / JOBS_FILE).is_file():
        for line in (sweep_dir / JOBS_FILE).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                recorded[record["job"]] = record
    rows = {}
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        if (job_dir / "summary.json").is_file() or (job_dir / ".hydra" / "overrides.yaml").is_file():
            rows[int(job_dir.name)] = row_of(job_dir, recorded.get(int(job_dir.name)))
    for job, record in recorded.items():
        if job not in rows:
            rows[job] = {"job": job, "overrides": " ".join(record["overrides"]), "status": record["status"],
                         "error": record["error"]}
    return [{column: rows[job].get(column) for column in COLUMNS} for job in sorted(rows)]


def row_of(job_dir: Path, record: dict | None) -> dict:
    summary = read_json(job_dir / "summary.json")
    config = read_yaml(job_dir / "config.resolved.yaml")
    overrides = read_yaml(job_dir / ".hydra" / "overrides.yaml")
    if overrides is None and record is not None:
        overrides = record["overrides"]
    answers = ((summary.get("eval") or {}).get("after") or {}).get("answers") or {}
    row = {"job": int(job_dir.name), "overrides": " ".join(overrides or []),
           "status": summary.get("status") or (record or {}).get("status") or "unknown",
           "error": summary.get("error") or (record or {}).get("error"),
           "preset": (summary.get("target_modules") or {}).get("preset"),
           "r": ((config or {}).get("lora") or {}).get("r"),
           "exact_match": f"{answers['exact_match']}/{answers['prompts']}" if answers else None}
    for key in ("trainable_params", "initial_loss", "final_loss", "eval_loss", "runtime_s", "tokens_per_second",
                "peak_memory_mb", "plan_vram_gib"):
        row[key] = summary.get(key)
    return row


def read_json(path: Path) -> dict:
    """A job's summary; {} when it has none; a damaged one is a row that says so, naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return {}
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        value = None
    if not isinstance(value, dict):
        return {"status": "damaged", "error": f"{path} is damaged (not a JSON object of a run's summary)"}
    return value


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def write(sweep_dir: Path, rows: list[dict]) -> None:
    """sweep_summary.csv, sweep_summary.md and sweep.png in the sweep directory."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(sweep_dir / "sweep_summary.csv", text.getvalue())
    verdict = best_lines(rows) + search_lines(sweep_dir, rows)
    write_atomically(sweep_dir / "sweep_summary.md", "\n".join(markdown(rows) + [""] + verdict) + "\n")
    plot(sweep_dir / "sweep.png", rows)


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10000:
        return f"{value:,}"
    return str(value)


def markdown(rows: list[dict]) -> list[str]:
    shown = [c for c in COLUMNS if c != "error" and any(row.get(c) is not None for row in rows)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        status = row["status"] if row["status"] != "failed" else f"failed: {row['error']}"
        lines.append("| " + " | ".join(cell(status if c == "status" else row.get(c)) for c in shown) + " |")
    return lines


def score(row: dict) -> float | None:
    """What a job reached: its eval loss, else its final train loss (lower is better)."""
    return row.get("eval_loss") if row.get("eval_loss") is not None else row.get("final_loss")


def best_lines(rows: list[dict]) -> list[str]:
    """Which completed job reached the lowest loss, and what it cost beside the all_linear job of the same rank."""
    done = [row for row in rows if row["status"] == "completed" and score(row) is not None]
    if not done:
        return ["no job completed"]
    best = min(done, key=score)
    which = "eval loss" if best.get("eval_loss") is not None else "final train loss"
    lines = [f"best {which}: {score(best):.4g}, job {best['job']} ({best['overrides'] or 'no overrides'})"]
    baseline = next((row for row in done if row["preset"] == "all_linear" and row["r"] == best["r"]), None)
    if baseline is not None and baseline is not best:
        ratios = [f"{key.replace('_', ' ')} x{best[key] / baseline[key]:.2f}"
                  for key in ("trainable_params", "peak_memory_mb", "runtime_s") if best.get(key) and baseline.get(key)]
        lines.append(f"against all_linear at r={best['r']} (job {baseline['job']}, {which} {score(baseline):.4g}): "
                     + ", ".join(ratios))
    return lines


def describe(rows: list[dict], sweep_dir: Path) -> list[str]:
    failed = sum(row["status"] == "failed" for row in rows)
    damaged = [row for row in rows if row["status"] == "damaged"]  # named with their file, each on a line
    return [f"sweep: {len(rows)} jobs, {failed} failed; summary in {sweep_dir}/sweep_summary.md (csv, sweep.png)",
            *markdown(rows), *(f"job {row['job']}: {row['error']}" for row in damaged), *best_lines(rows),
            *search_lines(sweep_dir, rows)]


def search_lines(sweep_dir: Path, rows: list[dict]) -> list[str]:
    """Optuna's verdict (optimization_results.yaml, written when a search ends) and the job that reached it."""
    results = read_yaml(sweep_dir / "optimization_results.yaml")
    if not isinstance(results, dict) or "best_params" not in results:
        return []
    params = [f"{key}={value}" for key, value in results["best_params"].items()]
    job = next((row["job"] for row in rows if set(params) <= set((row["overrides"] or "").split())), None)
    return [f"optuna best trial: objective {results['best_value']:.4g}"
            + (f", job {job}" if job is not None else "") + f" ({' '.join(params)})"]


def plot(path: Path, rows: list[dict]) -> None:
    """Loss against trainable parameters and against peak memory, each point labelled with its preset and rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [row for row in rows if row["status"] == "completed" and score(row) is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ylabel = "eval loss" if all(row.get("eval_loss") is not None for row in done) else "loss (eval, else final)"
    for ax, key, label in ((axes[0], "trainable_params", "trainable parameters"),
                           (axes[1], "peak_memory_mb", "peak memory (MB)")):
        points = [row for row in done if row.get(key) is not None]
        ax.scatter([row[key] for row in points], [score(row) for row in points])
        for row in points:
            ax.annotate(f"{row['preset'] or 'custom'} r{row['r']}", (row[key], score(row)), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(done)} of {len(rows)} jobs completed")
    fig.tight_layout()
    staging = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(staging, dpi=100)
    plt.close(fig)
    staging.replace(path)
