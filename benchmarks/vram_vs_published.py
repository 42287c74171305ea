"""Put `plan`'s VRAM estimate beside published peak-memory measurements for the same settings.

Run: .venv/bin/python benchmarks/vram_vs_published.py   (offline, a few seconds; prints a markdown table)
Sources and caveats for each row: docs/vram-estimates.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import compose  # noqa: E402

from pipeline.config import to_runconfig  # noqa: E402
from pipeline.model import targets  # noqa: E402
from pipeline.model.skeleton import build_meta_model  # noqa: E402
from pipeline.plan import estimate  # noqa: E402

GB = 1e9 / 2**30  # published "GB" rows are converted to GiB
LLAMA2_7B = ["model.architecture.intermediate_size=11008", "model.architecture.num_key_value_heads=32",
             "model.architecture.vocab_size=32000"]
QV = "lora.target_modules=[q,v]"
# Runs whose loss is chunked (torchtune's CEWithChunkedOutputLoss in its llama3_1 configs) use backend=unsloth,
# whose estimate assumes a chunked loss; every other row uses backend=hf (full logits).
CHUNKED = "backend=unsloth"
FULL = "backend=hf"
# (label, published GiB, overrides)
ROWS = [
    ("torchtune Llama-3.1-8B QLoRA r8 all, 2x2048, ckpt, AdamW, chunked CE", 7.4,
     ["model=llama3_1_8b", CHUNKED, "lora.r=8", "trainer.per_device_train_batch_size=2", "model.max_seq_length=2048",
      "trainer.optim=adamw_torch"]),
    ("torchtune Llama-3.1-8B LoRA r8 q,v,o + MLP, 2x2048, ckpt, AdamW, chunked CE (4090)", 16.2,
     ["model=llama3_1_8b", CHUNKED, "quantization=none", "lora.r=8", "lora.target_modules=[q,v,o,gate,up,down]",
      "trainer.per_device_train_batch_size=2", "model.max_seq_length=2048", "trainer.optim=adamw_torch"]),
    ("torchtune Llama-2-7B QLoRA r8 all, 4x2048, ckpt, AdamW", 12.3 * GB,
     ["model=llama3_1_8b", *LLAMA2_7B, "lora.r=8", "trainer.per_device_train_batch_size=4",
      "model.max_seq_length=2048", "trainer.optim=adamw_torch"]),
    ("torchtune Llama-2-7B LoRA r8 q,v, 4x2048, ckpt, AdamW", 21.3 * GB,
     ["model=llama3_1_8b", *LLAMA2_7B, "quantization=none", "lora.r=8", QV, "trainer.per_device_train_batch_size=4",
      "model.max_seq_length=2048", "trainer.optim=adamw_torch"]),
    ("torchtune Llama-2-7B QLoRA r8 all, 2x512, ckpt, AdamW", 9.29 * GB,
     ["model=llama3_1_8b", *LLAMA2_7B, "lora.r=8", "trainer.per_device_train_batch_size=2",
      "model.max_seq_length=512", "trainer.optim=adamw_torch"]),
    ("torchtune Llama-3-8B LoRA r8 q,v, 2x512, ckpt, AdamW", 18.5 * GB,
     ["model=llama3_1_8b", "quantization=none", "lora.r=8", QV, "trainer.per_device_train_batch_size=2",
      "model.max_seq_length=512", "trainer.optim=adamw_torch"]),
    ("litgpt Llama-3.1-8B LoRA r32 q,v, 1x512, no ckpt, AdamW", 19.73 * GB,
     ["model=llama3_1_8b", "quantization=none", "lora.r=32", QV, "trainer.per_device_train_batch_size=1",
      "model.max_seq_length=512", "trainer.optim=adamw_torch", "trainer.gradient_checkpointing=false"]),
    ("litgpt Llama-3.1-8B QLoRA r32 q,v, 2x512, no ckpt, paged AdamW", 17.41 * GB,
     ["model=llama3_1_8b", "quantization.double_quant=false", "lora.r=32", QV,
      "trainer.per_device_train_batch_size=2", "model.max_seq_length=512", "trainer.optim=paged_adamw_32bit",
      "trainer.gradient_checkpointing=false"]),
    ("litgpt Mistral-7B LoRA r32 q,v, 2x512, no ckpt, AdamW", 20.66 * GB,
     ["model=mistral_7b", "model.architecture.vocab_size=32000", "quantization=none", "lora.r=32", QV,
      "trainer.per_device_train_batch_size=2", "model.max_seq_length=512", "trainer.optim=adamw_torch",
      "trainer.gradient_checkpointing=false"]),
    ("litgpt Mistral-7B QLoRA r32 q,v, 2x512, no ckpt, paged AdamW", 14.29 * GB,
     ["model=mistral_7b", "model.architecture.vocab_size=32000", "quantization.double_quant=false", "lora.r=32", QV,
      "trainer.per_device_train_batch_size=2", "model.max_seq_length=512", "trainer.optim=paged_adamw_32bit",
      "trainer.gradient_checkpointing=false"]),
    ("litgpt Llama-3.2-1B LoRA r32 q,v, 1x512, no ckpt, AdamW", 4.49 * GB,
     ["model=llama3_2_1b", "quantization=none", "lora.r=32", QV, "trainer.per_device_train_batch_size=1",
      "model.max_seq_length=512", "trainer.optim=adamw_torch", "trainer.gradient_checkpointing=false"]),
]


def estimate_gib(overrides: list[str]) -> float:
    if CHUNKED not in overrides:
        overrides = [FULL, *overrides]
    run = to_runconfig(compose(*overrides))
    model = build_meta_model(run.model)
    names = targets.resolve(run.lora.target_modules, model.config.model_type).target_modules
    return estimate.estimate(model, run, names).vram_gib


def main() -> None:
    print("| published run | published GiB | plan GiB | error |\n|---|---:|---:|---:|")
    errors = []
    for label, published, overrides in ROWS:
        planned = estimate_gib(overrides)
        errors.append((planned - published) / published)
        print(f"| {label} | {published:.1f} | {planned:.1f} | {100 * errors[-1]:+.0f}% |")
    within = sum(abs(e) <= 0.2 for e in errors)
    mean_error = 100 * sum(map(abs, errors)) / len(errors)
    print(f"\n{within} of {len(errors)} within ±20%; mean absolute error {mean_error:.0f}%")


if __name__ == "__main__":
    main()
