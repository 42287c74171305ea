"""Data preparation at scale: our preprocessing against TRL's own dataset preparation inside SFTTrainer.

Run: .venv/bin/python benchmarks/preprocess.py [--rows 20000] [--rounds 3]   (issue goal: --rows 200000)

A chat dataset of `rows` conversations (one to three exchanges over the tiny data's scenes, so lengths vary) is
written once. Each side then runs in a fresh process with fresh `datasets` and data caches, alternating, and reports
the seconds of its data step alone (imports and model loading excluded):
- ours: the data step as `train` runs it (read, detect, normalize, TRL's tokenization and masks,
  length policy, statistics, cache write);
- TRL: `SFTTrainer`'s own `_prepare_dataset` on the same rows (timed inside the trainer the way SFTTrainer runs it),
  with as many processes as ours uses (`dataset_num_proc`).
Each side's peak memory is its process's peak RSS plus that of its largest worker process; beside it, the same sum
for anonymous memory alone (RssAnon, sampled every 20 ms), since RSS also counts the pages of files read through a
memory map, which the kernel can drop.
It prints the time ratio (goal: at most 1.0x) and the memory ratio (goal: at most 1.0x), the time of our second run
served from the cache against the first (goal: at most 0.1x; the key needs no reading, so no source is read), the fill
ratio of TRL's packing (best-fit decreasing) on our prepared rows at the quickstart's limit (goal: 97% of tokens real).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests"))  # conftest.compose: the config as the CLI composes it


def write_chats(path: Path, rows: int) -> None:
    """`rows` conversations: one to three user/assistant exchanges, each question over one to four scenes."""
    from make_tiny_data import INSTRUCTION, reply, scene

    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            messages = []
            for _ in range(rng.randint(1, 3)):
                scenes = [scene(rng) for _ in range(rng.randint(1, 4))]
                question = " ".join(sentence for sentence, _, _ in scenes)
                messages += [{"role": "user", "content": f"{INSTRUCTION}\n{question}"},
                             {"role": "assistant", "content": reply(scenes[-1][1], scenes[-1][2])}]
            f.write(json.dumps({"messages": messages}) + "\n")


def run_config(source: Path) -> object:
    from conftest import compose

    from pipeline.config import to_runconfig

    return to_runconfig(compose("experiment=quickstart", f"data.source={source}", "data.val_size=0"))


def ours(source: Path) -> dict:
    import trl.trainer.sft_trainer  # noqa: F401 - imported before the clock starts, as on TRL's side
    from transformers import AutoTokenizer

    from pipeline.data import formats, prepare, sources
    from pipeline.train.data import Cached, from_cache, read_data

    run = run_config(source)
    tokenizer = AutoTokenizer.from_pretrained(run.model.name, model_max_length=run.model.max_seq_length)
    sources.quiet_progress_bars()
    anonymous = AnonymousPeak()
    started = time.perf_counter()
    raw = read_data(run)  # as `train` runs it: a cache hit (keyed on the inputs) reads no source
    if isinstance(raw, Cached):
        prepared = from_cache(run, tokenizer, raw).prepared
    else:
        prepared = prepare.prepare(formats.build(run.data, tokenizer, run.seed, raw), tokenizer, run)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()  # before packing, which is not part of the data step
    return {"seconds": seconds, "rss_mb": peak, "anon_mb": anonymous.stop(), "from_cache": prepared.from_cache,
            "fill": packing_fill(prepared.train, run)}


class AnonymousPeak:
    """The peak of anonymous memory (RssAnon: what RSS holds apart from pages of files, which the kernel can drop),
    this process's plus its largest worker's, sampled every 20 ms while the data step runs."""

    def __init__(self) -> None:
        import threading

        self.peak, self.running = 0.0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        import psutil

        me = psutil.Process()
        while self.running:
            pids = [me.pid] + [child.pid for child in me.children(recursive=True)]
            anon = [anonymous_mb(pid) for pid in pids]
            self.peak = max(self.peak, anon[0] + max(anon[1:], default=0.0))
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.peak


def anonymous_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024
    except (OSError, StopIteration):  # a worker that just ended
        return 0.0


def peak_rss_mb() -> float:
    """This process's peak RSS plus its largest worker's (tokenizing processes), in MiB (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def packing_fill(dataset: object, run: object) -> float:
    """The share of real tokens in TRL's packed sequences (what data.packing=true gives the trainer)."""
    from trl.data_utils import pack_dataset

    max_length = run.data.max_length or run.model.max_seq_length
    packed = pack_dataset(dataset, max_length, strategy="bfd")
    return sum(len(ids) for ids in packed["input_ids"]) / (len(packed) * max_length)


def theirs(source: Path) -> dict:
    """SFTTrainer on the raw messages; its `_prepare_dataset` timed where the trainer calls it."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    run = run_config(source)
    tokenizer = AutoTokenizer.from_pretrained(run.model.name, model_max_length=run.model.max_seq_length)
    model = AutoModelForCausalLM.from_pretrained(run.model.name)
    prepare, spent = SFTTrainer._prepare_dataset, []

    def timed_prepare(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return prepare(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    SFTTrainer._prepare_dataset = timed_prepare
    anonymous = AnonymousPeak()
    started = time.perf_counter()
    dataset = load_dataset("json", data_files=str(source), split="train")  # reading is part of the data step
    loading = time.perf_counter() - started
    from pipeline.data.prepare import processes

    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_length=run.model.max_seq_length, assistant_only_loss=True,
                     report_to="none", dataset_num_proc=processes(run.data.num_proc, len(dataset)), bf16=False)
    SFTTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=dataset)
    return {"seconds": loading + sum(spent), "rss_mb": peak_rss_mb(), "anon_mb": anonymous.stop()}


def measure(side: str, source: Path, scratch: Path, keep_cache: bool = False) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(scratch / f"hf-{time.time_ns()}"),
           "FT_DATA_CACHE": str(scratch / ("cache" if keep_cache else f"cache-{time.time_ns()}"))}
    result = subprocess.run([sys.executable, __file__, "--side", side, "--source", str(source)], cwd=REPO, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", choices=["ours", "theirs"], help=argparse.SUPPRESS)  # one measurement (a child)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(ours(args.source) if args.side == "ours" else theirs(args.source)))
        return
    with tempfile.TemporaryDirectory(prefix="preprocess-") as folder:
        scratch = Path(folder)
        source = scratch / "chats.jsonl"
        write_chats(source, args.rows)
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        memory: dict[str, list[float]] = {"ours": [], "theirs": []}
        anonymous: dict[str, list[float]] = {"ours": [], "theirs": []}
        fill = None
        for round_ in range(args.rounds):
            for side in ("ours", "theirs"):
                result = measure(side, source, scratch)
                times[side].append(result["seconds"])
                memory[side].append(result["rss_mb"])
                anonymous[side].append(result["anon_mb"])
                fill = result.get("fill", fill)
                print(f"  round {round_ + 1} {side}: {result['seconds']:.2f} s, peak {result['rss_mb']:.0f} MiB "
                      f"(anonymous {result['anon_mb']:.0f} MiB)", flush=True)
        measure("ours", source, scratch, keep_cache=True)  # fills the cache
        cached = statistics.median(measure("ours", source, scratch, keep_cache=True)["seconds"]
                                   for _ in range(args.rounds))
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
    print(f"\n{args.rows} chat rows, median of {args.rounds} alternating runs (data step only)")
    ours_mb, theirs_mb = statistics.median(memory["ours"]), statistics.median(memory["theirs"])
    print(f"ours {ours_s:.2f} s, TRL's SFTTrainer preparation {theirs_s:.2f} s: {ours_s / theirs_s:.2f}x the time")
    print(f"peak memory: ours {ours_mb:.0f} MiB, TRL's {theirs_mb:.0f} MiB: {ours_mb / theirs_mb:.2f}x")
    ours_anon, theirs_anon = statistics.median(anonymous["ours"]), statistics.median(anonymous["theirs"])
    print(f"of it anonymous (not pages of files): ours {ours_anon:.0f} MiB, TRL's {theirs_anon:.0f} MiB: "
          f"{ours_anon / theirs_anon:.2f}x")
    print(f"ours served from the cache: {cached:.2f} s, {cached / ours_s:.3f}x the time of preparing (goal: 0.1x)")
    print(f"packing (TRL, best-fit decreasing) on our rows: {100 * fill:.1f}% of tokens are real")


if __name__ == "__main__":
    main()
