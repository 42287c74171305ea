"""Speed and peak memory of every target preset on both backends, beside `plan`'s VRAM estimate.

Run: .venv/bin/python benchmarks/gpu_presets.py [--models llama3_2_1b,llama3_1_8b] [--backends unsloth,hf]
         [--presets all_linear,attention,minimal,mlp] [--steps 30] [--out outputs/gpu-presets]
     (or `make bench-gpu-presets`; needs CUDA). `--size tiny` (`make bench-smoke`) is the CPU smoke test: the same
     path on a scaled-down copy of each architecture, 3 steps per run, a few minutes on 2 cores.

No hub is needed: each model is built from its preset's architecture numbers (conf/model/<name>.yaml) with random
bf16 weights and the shipped tiny tokenizer (its ids are a subset of any real vocabulary), saved under
<out>/models/ and reused. Every run is the real CLI (`python -m pipeline.train`) in its own process, so each peak
is that run's own: QLoRA r16, batch 4 x 1024 tokens of text. Random weights say nothing about quality; speed and
memory do not depend on them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
TINY_MODEL = REPO / "assets/tiny-llama"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
PRESETS = ("all_linear", "attention", "minimal", "mlp")
BACKENDS = ("unsloth", "hf")
FIELDS = ("model", "size", "backend", "preset", "status", "autocast", "trainable_params", "train_tokens_per_second",
          "peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib", "plan_gib", "allocated_vs_plan",
          "reserved_vs_plan", "run_dir", "error")


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    models: tuple[str, ...]  # model presets measured unless --models says otherwise
    batch: int
    seq_len: int
    steps: int
    tiny: bool  # each architecture scaled down to a width of 64 and 2 layers


SIZES = {
    "full": Size("full", ("llama3_2_1b", "llama3_1_8b"), batch=4, seq_len=1024, steps=30, tiny=False),
    "tiny": Size("tiny", ("llama3_2_1b",), batch=2, seq_len=64, steps=3, tiny=True),
}


def train_cli(overrides: list[str], log: Path) -> int:
    """`python -m pipeline.train` with its output in `log` (the command on its first line); the exit code."""
    command = [sys.executable, "-m", "pipeline.train", "logger=none", *overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        f.write(" ".join(command) + "\n")
        f.flush()
        return subprocess.run(command, cwd=REPO, env=cli_env(), stdout=f, stderr=subprocess.STDOUT).returncode


def cli_env() -> dict[str, str]:
    # every model and dataset is local: no hub probes or retries
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def tiny_tokenizer_config() -> dict:
    return json.loads((TINY_MODEL / "config.json").read_text())


def scaled_down(architecture: dict) -> dict:
    """Width 64, 2 layers, the tiny tokenizer's vocabulary; MLP ratio and query heads per key/value head kept."""
    heads, hidden = architecture["num_attention_heads"], architecture["hidden_size"]
    scaled = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16,
              "intermediate_size": 64 * architecture["intermediate_size"] // hidden,
              "moe_intermediate_size": 64 * architecture.get("moe_intermediate_size", 0) // hidden,
              "num_key_value_heads": max(1, 4 * architecture.get("num_key_value_heads", heads) // heads),
              "vocab_size": tiny_tokenizer_config()["vocab_size"]}
    return {key: value for key, value in scaled.items() if key in architecture}


def preset_config(model_preset: str, tiny: bool) -> object:
    """The transformers config of a model preset's architecture numbers (scaled down when `tiny`)."""
    from conftest import compose

    from pipeline.model.skeleton import model_config

    overrides = []
    if tiny:
        architecture = dict(compose(f"model={model_preset}").model.architecture)
        overrides = [f"model.architecture.{key}={value}" for key, value in scaled_down(architecture).items()]
    config = model_config(compose(f"model={model_preset}", *overrides).model)
    tokens = tiny_tokenizer_config()
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokens["pad_token_id"], tokens["bos_token_id"], tokens["eos_token_id"])
    return config


def build_random_model(model_preset: str, folder: Path, tiny: bool = False) -> Path:
    """The preset's architecture with random bf16 weights and the tiny tokenizer, saved like a hub checkpoint;
    reused when `folder` already holds one."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    config = preset_config(model_preset, tiny)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed build left
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 8B weights: seconds on a GPU
    print(f"building {folder.name}: random weights on {device}", flush=True)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(partial)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the runs, not this process, should hold the GPU's memory
    for name in TOKENIZER_FILES:
        (partial / name).write_bytes((TINY_MODEL / name).read_bytes())
    partial.rename(folder)  # only a complete model gets the name that marks it reusable
    return folder


def build_long_texts(path: Path) -> Path:
    """64 text samples longer than 1024 tokens (the sample texts repeated), so every batch is full length."""
    facts = [json.loads(line)["text"] for line in (REPO / "assets/data/tiny_text.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for i in range(64):
            f.write(json.dumps({"text": " ".join(facts[i:] + facts[:i])}) + "\n")
    return path


def run_overrides(model_preset: str, model_dir: Path, backend: str, preset: str, size: Size, texts: Path,
                  run_dir: Path) -> list[str]:
    return [f"model={model_preset}", f"model.name={model_dir}", "model.chat_template=null",
            f"model.max_seq_length={size.seq_len}", f"backend={backend}", f"lora/target_modules={preset}",
            f"data.source={texts}", "data.format=text", "data.overlength=truncate", "data.val_size=0",
            f"trainer.max_steps={size.steps}", f"trainer.per_device_train_batch_size={size.batch}",
            "trainer.gradient_accumulation_steps=1", f"hydra.run.dir={run_dir}"]


def peaks_gib(summary: dict) -> dict:
    """Peak allocated and reserved GPU memory, or on CPU the peak resident memory of the run's process."""
    on_gpu = summary.get("device") == "cuda"
    mb = {"peak_allocated_gib": summary.get("peak_memory_allocated_mb") if on_gpu else None,
          "peak_reserved_gib": summary.get("peak_memory_reserved_mb") if on_gpu else None,
          "peak_rss_gib": None if on_gpu else summary.get("peak_memory_mb")}
    return {key: round(value / 1024, 3) if value else None for key, value in mb.items()}


def ratio(measured: float | None, planned: float | None) -> float | None:
    return round(measured / planned, 2) if measured and planned else None


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def result_row(run_dir: Path, log: Path, exit_code: int) -> dict:
    """One measurement from the run's summary.json (a run that left no summary: its last line)."""
    if not (run_dir / "summary.json").is_file():
        return {"status": "failed", "error": f"exit {exit_code}: {last_line(log)}", "run_dir": str(run_dir)}
    summary = json.loads((run_dir / "summary.json").read_text())
    row = {"status": summary["status"], "autocast": summary.get("autocast"),
           "trainable_params": summary.get("trainable_params"),
           # tokens over the trainer's own train_runtime: loading and quantizing the model are left out
           "train_tokens_per_second": summary.get("train_tokens_per_second"),
           **peaks_gib(summary),
           "plan_gib": summary.get("plan_vram_gib"), "run_dir": str(run_dir), "error": summary.get("error")}
    row["allocated_vs_plan"] = ratio(row["peak_allocated_gib"], row["plan_gib"])
    row["reserved_vs_plan"] = ratio(row["peak_reserved_gib"], row["plan_gib"])
    return row


def measure(model: str, model_dir: Path, backend: str, preset: str, size: Size, texts: Path, results: Path) -> dict:
    """One training run, its row, and a progress line."""
    name = f"{model}-{backend}-{preset}"
    started = time.time()
    exit_code = train_cli(run_overrides(model, model_dir, backend, preset, size, texts, results / name),
                          results / f"{name}.log")
    row = {"model": model, "size": size.name, "backend": backend, "preset": preset,
           **result_row(results / name, results / f"{name}.log", exit_code)}
    print(f"{name}: {row['status']} in {time.time() - started:.0f} s" + (f": {row['error']}" if row["error"] else ""),
          flush=True)
    return row


def measure_all(out: Path, results: Path, models: list[str], backends: list[str], presets: list[str],
                size: Size) -> list[dict]:
    """Train each model x backend x preset once; one row per run, failed runs included."""
    texts = build_long_texts(results / "long_texts.jsonl")
    rows = []
    for model in models:
        model_dir = build_random_model(model, out / "models" / f"random-{model}{'-tiny' if size.tiny else ''}",
                                       size.tiny)
        rows += [measure(model, model_dir, backend, preset, size, texts, results)
                 for backend in backends for preset in presets]
    return rows


def shown(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def model_label(row: dict) -> str:
    return f"{row['model']} (tiny)" if row["size"] == "tiny" else row["model"]


def format_table(rows: list[dict]) -> str:
    on_gpu = any(row.get("peak_allocated_gib") for row in rows)
    memory = "alloc GiB  resv GiB" if on_gpu else "  RSS GiB"
    width = max(len("model"), *map(len, map(model_label, rows)))
    header = (f"{'model':<{width}} {'backend':<8} {'preset':<11} {'status':<10} {'autocast':<8} {'tokens/s':>9} "
              f"{memory} {'plan GiB':>9} {'alloc/plan':>10} {'resv/plan':>9}")
    lines = [header, "-" * len(header)]
    for row in rows:
        measured = (f"{shown(row.get('peak_allocated_gib')):>9} {shown(row.get('peak_reserved_gib')):>9}" if on_gpu
                    else f"{shown(row.get('peak_rss_gib')):>9}")
        lines.append(f"{model_label(row):<{width}} {row['backend']:<8} {row['preset']:<11} {row['status']:<10} "
                     f"{row.get('autocast') or '-':<8} {shown(row.get('train_tokens_per_second'), '.0f'):>9} "
                     f"{measured} {shown(row.get('plan_gib')):>9} {shown(row.get('allocated_vs_plan')):>10} "
                     f"{shown(row.get('reserved_vs_plan')):>9}")
    if not on_gpu:
        lines.append("CPU: peak resident memory of each training process (Python and libraries included) in place of "
                     "GPU memory; no ratios, since plan prices GPU memory")
    return "\n".join(lines)


def device_line(size: Size) -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (f"{device}: random weights{', architectures scaled down' if size.tiny else ''}, QLoRA r16, "
            f"batch {size.batch} x {size.seq_len} tokens, {size.steps} steps; tokens/s over the training loop alone")


def write_results(rows: list[dict], results: Path) -> None:
    (results / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    with (results / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def report(rows: list[dict], size: Size, results: Path) -> int:
    """Print the table, write results.json / results.csv; the exit code (1 when a run did not complete)."""
    print(f"\n{device_line(size)}\n{format_table(rows)}")
    write_results(rows, results)
    print(f"\nwritten: {results / 'results.json'}, {results / 'results.csv'} and each run's log and directory")
    return 1 if any(row["status"] != "completed" for row in rows) else 0


def new_results_folder(out: Path) -> Path:
    # a completed run directory is never trained into again: each invocation gets its own
    folder = out / time.strftime("%Y-%m-%d_%H-%M-%S")
    folder.mkdir(parents=True)
    return folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="full: the real architectures (CUDA); tiny: scaled down, the CPU smoke test")
    parser.add_argument("--models", help="comma-separated model presets (conf/model/); default: by --size")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--presets", default=",".join(PRESETS), help="target-module presets")
    parser.add_argument("--steps", type=int, help="optimizer steps per run; default: by --size")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu-presets")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    import torch

    size = SIZES[args.size]
    if not size.tiny and not torch.cuda.is_available():
        print("error: --size full needs a CUDA device (1B and 8B models on CPU take hours). Use --size tiny here.",
              file=sys.stderr)
        sys.exit(2)
    size = dataclasses.replace(size, steps=args.steps or size.steps)
    models = args.models.split(",") if args.models else list(size.models)
    results = new_results_folder(args.out)
    rows = measure_all(args.out, results, models, args.backends.split(","), args.presets.split(","), size)
    sys.exit(report(rows, size, results))


if __name__ == "__main__":
    main()
