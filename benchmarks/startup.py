"""Start-up: what a user waits for before anything is computed, against the floor the libraries set.

Run: .venv/bin/python benchmarks/startup.py [--rounds 5]

- `--cfg job`: composing and printing the config (no torch import: checked, not assumed);
- `plan model=llama3_1_8b` (four presets priced, with torch and transformers made unimportable: the preset's numbers
  are written out, not built) against the bare-library floor, a script that builds the same Llama-3.1-8B on the
  meta device with transformers and counts one preset's LoRA parameters with PEFT, and against `--cfg job`;
- `preprocess experiment=quickstart`, cold (a fresh data cache) and served from the cache;
- train's start-up: `pipeline.train experiment=quickstart trainer.max_steps=1` against the hand-written script of
  benchmarks/baselines/hf_qlora.py at 1 step (imports, data, model, one step, save: nearly all start-up);
- the same run with its data served from the cache: seconds from the model loaded to the first step
  (`startup_seconds` in summary.json; goal: within 1 s).
Each pair alternates `rounds` times; medians. Every process runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLOOR = """
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
with torch.device("meta"):
    model = AutoModelForCausalLM.from_config(config)
model = get_peft_model(model, LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"]))
print(model.get_nb_trainable_parameters()[0])
"""
NO_TORCH = "import runpy, sys; runpy.run_module('pipeline.train', run_name='__main__'); " \
           "sys.exit(3 if 'torch' in sys.modules else 0)"
# plan with torch and transformers unimportable: it fails if it needs either
PLAN_WITHOUT_TORCH = "import runpy, sys; sys.modules.update(torch=None, transformers=None); " \
                     "runpy.run_module('pipeline.plan', run_name='__main__')"


def timed(command: list[str], cache: Path, keep_cache: bool = False) -> float:
    """Wall seconds of one fresh process (a failure stops the benchmark)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FT_DATA_CACHE": str(cache)}
    if not keep_cache:
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-") as scratch:
        out, cache = Path(scratch), Path(scratch) / "cache"
        train = [PYTHON, "-m", "pipeline.train", "experiment=quickstart", "logger=none", "data.val_size=0",
                 "eval.before_after=false", "backend=hf", "trainer.max_steps=1"]
        pairs = {  # name: (ours, theirs or None, keep the data cache between runs)
            "--cfg job (no torch)": ([PYTHON, "-c", NO_TORCH, "experiment=quickstart", "--cfg", "job"], None, False),
            "plan (4 presets, no torch) / PEFT floor (1)": (
                [PYTHON, "-c", PLAN_WITHOUT_TORCH, "model=llama3_1_8b", f"hydra.run.dir={out}/plan"],
                [PYTHON, "-c", FLOOR], False),
            "preprocess, cold": ([PYTHON, "-m", "pipeline.preprocess", "experiment=quickstart",
                                  f"hydra.run.dir={out}/pre"], None, False),
            "preprocess, from cache": ([PYTHON, "-m", "pipeline.preprocess", "experiment=quickstart",
                                        f"hydra.run.dir={out}/pre"], None, True),
            "train 1 step / script": ([*train, f"hydra.run.dir={out}/train"],
                                      [PYTHON, "benchmarks/baselines/hf_qlora.py", str(out / "script"), "1"], False),
        }
        results = {}
        for name, (ours, theirs, keep) in pairs.items():
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            if keep:  # served from the cache: one untimed run fills it
                timed(ours, cache)
            for _ in range(args.rounds):
                for who, command in (("ours", ours), ("theirs", theirs)):
                    if command is None:
                        continue
                    subprocess.run(["rm", "-rf", str(out / "plan"), str(out / "pre"), str(out / "train"),
                                    str(out / "script")], check=True)
                    times[who].append(timed(command, cache, keep_cache=keep))
            results[name] = {who: statistics.median(t) for who, t in times.items() if t}
            print(f"  {name}: {results[name]}", flush=True)
        # served from the data cache: from the model loaded to the first step (summary.json's startup_seconds)
        warm = [*train, f"hydra.run.dir={out}/warm"]
        timed(warm, cache)  # fills the cache
        to_first_step = []
        for _ in range(args.rounds):
            subprocess.run(["rm", "-rf", str(out / "warm")], check=True)
            timed(warm, cache, keep_cache=True)
            startup = json.loads((out / "warm" / "summary.json").read_text())["startup_seconds"]
            to_first_step.append(startup["model_to_first_step"])
    print(f"\nstart-up, median of {args.rounds} runs (seconds; ours / theirs)")
    for name, r in results.items():
        ratio = f"{r['ours'] / r['theirs']:.2f}x ({r['theirs']:.2f} s)" if "theirs" in r else ""
        print(f"{name:<44} {r['ours']:>6.2f} s  {ratio}")
    print(f"{'train from the data cache: model loaded -> first step':<44} {statistics.median(to_first_step):>6.2f} s  "
          "(goal: within 1 s)")
    plan = next(r["ours"] for name, r in results.items() if name.startswith("plan"))
    print(f"plan / --cfg job: {plan / results['--cfg job (no torch)']['ours']:.2f}x")


if __name__ == "__main__":
    main()
