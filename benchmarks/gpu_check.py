"""Check a CUDA machine end to end: the quickstart, then a random-weight Llama-3.2-1B under every target preset.

Run: .venv/bin/python benchmarks/gpu_check.py [--out DIR] [--steps N]   (or `make gpu-check`; ~5 min on one GPU)

No hub is needed: the 1B model is built from the `llama3_2_1b` preset's architecture numbers with random weights
and the shipped tiny tokenizer (its ids are a subset of the 128k vocabulary). Random weights say nothing about
quality; they do exercise Unsloth's GPU path (its TRL replacement, kernels, precision, pre-quantization off since
the model is local) and give each preset's measured peak memory and speed, printed beside `plan`'s estimate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
PRESETS = "all_linear,attention,minimal,mlp"


def train(*overrides: str) -> None:
    command = [sys.executable, "-m", "pipeline.train", "logger=none", *overrides]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def build_random_1b(folder: Path) -> Path:
    """Llama-3.2-1B's shape with random bf16 weights and the tiny tokenizer, saved like a hub checkpoint."""
    import torch
    from conftest import compose
    from transformers import AutoModelForCausalLM

    from pipeline.model.skeleton import model_config

    if (folder / "config.json").is_file():
        return folder
    config = model_config(compose("model=llama3_2_1b").model)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, None, 2  # the tiny tokenizer's
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(REPO / "assets/tiny-llama" / name, folder / name)
    return folder


def build_long_texts(path: Path) -> Path:
    """64 text samples longer than 1024 tokens (the sample texts repeated), so every batch is full length."""
    facts = [json.loads(line)["text"] for line in (REPO / "assets/data/tiny_text.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for i in range(64):
            f.write(json.dumps({"text": " ".join(facts[i:] + facts[:i])}) + "\n")
    return path


def planned_gib(model_dir: Path, preset: str, overrides: list[str]) -> float:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.model import targets
    from pipeline.model.skeleton import build_meta_model
    from pipeline.plan import estimate

    run = to_runconfig(compose("model=llama3_2_1b", f"model.name={model_dir}", f"lora/target_modules={preset}",
                               *overrides))
    model = build_meta_model(run.model)
    resolution = targets.resolve(run.lora.target_modules, model.config.model_type)
    return estimate.estimate(model, run, resolution.target_modules).vram_gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu-check")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device: this check is for GPU machines (the test suite covers the CPU path)",
              file=sys.stderr)
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    train("experiment=quickstart", f"hydra.run.dir={args.out / 'quickstart'}")
    model_dir = build_random_1b(args.out / "random-llama-3.2-1b")
    shape = ["model.max_seq_length=1024", "trainer.per_device_train_batch_size=4"]
    sweep = args.out / "presets"
    long_texts = build_long_texts(args.out / "long_texts.jsonl")
    train("-m", "experiment=quickstart", "model=llama3_2_1b", f"model.name={model_dir}", "model.chat_template=null",
          f"data.source={long_texts}", "data.format=text", "data.overlength=truncate",
          f"lora/target_modules={PRESETS}", f"trainer.max_steps={args.steps}", "trainer.learning_rate=2e-4",
          "trainer.gradient_accumulation_steps=1", *shape, f"hydra.sweep.dir={sweep}")
    print(f"\n{torch.cuda.get_device_name()}: random Llama-3.2-1B, QLoRA r16, batch 4 x 1024 tokens")
    print(f"{'preset':<11} {'status':<10} {'autocast':<8} {'peak GiB':>9} {'plan GiB':>9} {'tokens/s':>9}")
    for job in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        s = json.loads((job / "summary.json").read_text())
        preset = s["target_modules"]["preset"]
        peak = s["peak_memory_mb"] / 1024
        print(f"{preset:<11} {s['status']:<10} {s.get('autocast', '-'):<8} {peak:>9.2f} "
              f"{planned_gib(model_dir, preset, shape):>9.2f} {s['tokens_per_second'] or 0:>9.0f}")


if __name__ == "__main__":
    main()
