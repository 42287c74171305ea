"""Streaming keeps memory flat: one pass over N rows and over 10 x N rows, chunk by chunk, at the same peak RSS.

Run: .venv/bin/python benchmarks/streaming.py [--rows 20000]

Chat rows as benchmarks/preprocess.py writes them. Each corpus is read by `data.streaming=true`'s training stream
(pipeline.data.streaming.TrainStream: read, checked, normalized, TRL's tokenization and masks, length policy, in
chunks of data.streaming_chunk rows) in a fresh process until one whole pass is prepared; no model is loaded. It
prints each process's peak RSS and rows a second, and the ratio of the two peaks (goal: at most 1.10), beside the
peak of preparing the larger corpus whole, as `data.streaming=false` does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))


def config(source: Path, streaming: bool) -> object:
    from conftest import compose

    from pipeline.config import to_runconfig

    return to_runconfig(compose("experiment=quickstart", f"data.source={source}", "data.val_size=0",
                                f"data.streaming={str(streaming).lower()}", "data.cache=false"))


def one_pass(source: Path, rows: int, streaming: bool) -> dict:
    from pipeline.model.loading import load_tokenizer

    run = config(source, streaming)
    tokenizer = load_tokenizer(run)
    started = time.perf_counter()
    if streaming:
        from pipeline.data.streaming import TrainStream, read_head

        stream = TrainStream(run, tokenizer, read_head(run.data))
        for _ in stream.rows():
            if stream.position.rows_read >= rows:
                break  # the pass's last chunk is prepared: the whole corpus went through
    else:
        from pipeline.data import formats, prepare

        prepare.prepare(formats.build(run.data, tokenizer, run.seed), tokenizer, run, write_cache=False)
    seconds = time.perf_counter() - started
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return {"seconds": seconds, "rss_mb": peak}


def measure(source: Path, rows: int, streaming: bool, scratch: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(scratch / f"hf-{time.time_ns()}"),
           "FT_DATA_CACHE": str(scratch / "cache")}
    command = [sys.executable, __file__, "--child", str(source), "--rows", str(rows)]
    result = subprocess.run([*command, *(["--whole"] if not streaming else [])], cwd=REPO, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_pass(args.child, args.rows, not args.whole)))
        return
    from preprocess import write_chats

    with tempfile.TemporaryDirectory(prefix="streaming-") as folder:
        scratch = Path(folder)
        results = {}
        for rows in (args.rows, 10 * args.rows):
            source = scratch / f"chats-{rows}.jsonl"
            write_chats(source, rows)
            results[rows] = measure(source, rows, True, scratch)
            print(f"  streamed {rows} rows: {results[rows]['seconds']:.1f} s, peak {results[rows]['rss_mb']:.0f} MiB",
                  flush=True)
        whole = measure(source, 10 * args.rows, False, scratch)
    small, large = results[args.rows], results[10 * args.rows]
    print("\none pass, streamed in chunks of 1000 rows (data step only, no model)")
    for rows, r in results.items():
        print(f"{rows:>8} rows: {r['seconds']:6.1f} s ({rows / r['seconds']:,.0f} rows/s), "
              f"peak RSS {r['rss_mb']:.0f} MiB")
    print(f"peak RSS, 10x the rows: {large['rss_mb'] / small['rss_mb']:.2f}x (goal: at most 1.10x)")
    print(f"the {10 * args.rows} rows prepared whole (data.streaming=false): {whole['seconds']:.1f} s, peak RSS "
          f"{whole['rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
