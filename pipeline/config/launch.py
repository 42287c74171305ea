"""The processes a launcher started (`torchrun`, `accelerate launch`): this one's rank, how many, and the time they
share.

Read from the launcher's environment only (no torch import, so `--cfg job` stays fast). Every process of a launch
composes the same config, so what decides the run directory must be the same in each: the launcher's start time,
not each process's own `now`. Rank 0 alone writes the run directory, the logs and W&B.
"""

from __future__ import annotations

import functools
import os
import time


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


@functools.cache
def launch_timestamp() -> float:
    """One process: now. Several: the start time of the launcher that started them (their common parent), so that
    ranks starting a second apart agree on `outputs/<date>/<time>`. Several nodes: give hydra.run.dir explicitly."""
    if world_size() > 1:
        import psutil  # accelerate's own dependency

        try:
            return psutil.Process(os.getppid()).create_time()
        except psutil.Error:
            pass
    return time.time()


def launch_time(pattern: str) -> str:
    """`${pipeline.launch_time:%H-%M-%S}`: Hydra's `${now:...}`, the same in every process of a launch."""
    return time.strftime(pattern, time.localtime(launch_timestamp()))


def main_process_file(path: str) -> str:
    """`${pipeline.main_process_file:...}`: the path on rank 0, the null device on the others (the log file)."""
    return path if is_main_process() else os.devnull


def single_process_note() -> str | None:
    """`accelerate launch --cpu --num_processes N` starts one process, whatever N: say so instead of training alone."""
    if world_size() == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"):
        return ("accelerate launch --cpu starts one process whatever --num_processes says; for several on CPU use "
                "accelerate launch --multi_gpu --num_processes N (gloo) or torchrun --nproc_per_node N")
    return None
