"""Check a CUDA machine end to end: the quickstart, then a random-weight Llama-3.2-1B under every target preset.

Run: .venv/bin/python benchmarks/gpu_check.py [--out DIR] [--steps N]   (or `make gpu-check`; ~5 min on one GPU)

No hub is needed: the 1B model is built from the `llama3_2_1b` preset's architecture numbers with random weights
and the shipped tiny tokenizer (benchmarks/gpu_presets.py, which measures both backends and an 8B too). Random
weights say nothing about quality; they do exercise Unsloth's GPU path (its TRL replacement, kernels, precision,
pre-quantization off since the model is local) and give each preset's measured peak memory and speed, printed
beside `plan`'s estimate.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gpu_presets import PRESETS, REPO, SIZES, measure_all, new_results_folder, report, train_cli


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
    results = new_results_folder(args.out)
    if train_cli(["experiment=quickstart", f"hydra.run.dir={results / 'quickstart'}"], results / "quickstart.log"):
        sys.exit(f"error: the quickstart failed; its output: {results / 'quickstart.log'}")
    print(f"quickstart completed: {results / 'quickstart'}", flush=True)
    size = dataclasses.replace(SIZES["full"], steps=args.steps)
    rows = measure_all(args.out, results, ["llama3_2_1b"], ["unsloth"], list(PRESETS), size)
    sys.exit(report(rows, size, results))


if __name__ == "__main__":
    main()
