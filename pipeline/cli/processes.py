"""`distributed.processes=N`: the command starts its N processes itself, as `torchrun --standalone --nproc_per_node N`
would, with torch's own launcher (`torch.distributed.launcher.api`, what torchrun runs), once the config has been
checked here. A mistake is then one line and exit code 2, said once, rather than one per process followed by the
launcher's own report and exit code 1. Each process runs `python -m pipeline.train` with the same arguments and this
run's directory; rank 0 says whatever goes wrong, and its exit code is this command's.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import uuid
from typing import Any

from pipeline.config.context import RunContext
from pipeline.config.launch import world_size
from pipeline.errors import ConfigError, RunFailed, first_line

GRACEFUL_STOP_S = 600  # Ctrl-C or SIGTERM: how long the processes get to save their checkpoint before being killed


def starts_processes(run: Any) -> bool:
    """Several asked for, and no launcher started this process (under torchrun the launcher's count decides)."""
    return run.distributed.processes > 1 and "WORLD_SIZE" not in os.environ


def check(run: Any, context: RunContext) -> None:
    processes = run.distributed.processes
    if processes == 1:
        return
    if "WORLD_SIZE" in os.environ and world_size() != processes:
        raise ConfigError("distributed.processes", f"{processes}, and the launcher started {world_size()}",
                          "leave distributed.processes out under torchrun or accelerate launch (their count decides)")
    if context.multirun:
        raise ConfigError("distributed.processes", f"{processes}: a sweep (-m) runs its jobs one process each",
                          "sweep with distributed.processes=1, or start each job of the sweep on its own")


def start(run: Any, context: RunContext, argv: list[str]) -> None:
    """Start the processes on this machine and wait for them; exits with rank 0's exit code when one fails."""
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    processes = run.distributed.processes
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and processes > gpus:
        raise ConfigError("distributed.processes", f"{processes}, and this machine has {gpus} GPUs (one each)",
                          f"give distributed.processes={gpus} or fewer")
    # torchrun's 1 thread each with GPUs; on CPUs alone the processes compute on them: the cores shared out
    os.environ.setdefault("OMP_NUM_THREADS", str(1 if gpus else max(1, (os.cpu_count() or 1) // processes)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          shutdown_timeout=GRACEFUL_STOP_S,
                          monitor_interval=1.0)  # a process that loses its peer has a second to say so first
    arguments = [a for a in argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={quoted(context.run_dir)}"]
    logging.disable(logging.ERROR)  # the launcher's own lines ("failed (exitcode: 2) ..."): rank 0 says what happened
    try:
        elastic_launch(config, sys.executable)("-m", "pipeline.train", *arguments)
    except ChildFailedError as failed:
        sys.exit(exit_code(failed.failures))
    except SignalException as stop:  # passed on to the processes, which stopped gracefully and said so
        sys.exit(128 + signal.Signals(stop.sigval).value)
    except Exception as error:  # noqa: BLE001 - the launcher itself (its rendezvous, a port): not the run
        raise RunFailed("distributed.processes", f"torch's launcher could not start the processes "
                        f"({first_line(error)})", "run them under torchrun --standalone --nproc_per_node N") from None
    finally:
        logging.disable(logging.NOTSET)


def exit_code(failures: dict[int, Any]) -> int:
    """The exit code of the failure that came first. The launcher stops the other processes once one fails (SIGTERM,
    then SIGKILL after its timeout) and records those too, later: only the first seen (to the second) count. A
    process among them that a signal killed (SIGKILL: often the system out of memory) said nothing: it is named."""
    first = min(failure.timestamp for failure in failures.values())
    firsts = {rank: failure for rank, failure in sorted(failures.items()) if failure.timestamp == first}
    killed = [(rank, failure) for rank, failure in firsts.items()
              if failure.exitcode < 0 and -failure.exitcode != signal.SIGTERM]
    if killed:
        rank, failure = killed[0]
        raise RunFailed("distributed.processes", f"the process of rank {rank} was killed by {failure.signal_name()} "
                        "before it could say why",
                        "look for the system running out of memory (dmesg), or run fewer processes")
    # each process said why in one line (rank 0 first): 2 a mistake, 1 a failed run, 130 / 143 a stop
    codes = [failure.exitcode for failure in firsts.values() if failure.exitcode > 0]
    return firsts[0].exitcode if 0 in firsts and firsts[0].exitcode > 0 else (codes[0] if codes else 1)


def quoted(path: Any) -> str:
    """A path as one quoted Hydra value (unquoted, a comma makes a sweep, '=' or brackets a parse error). Hydra reads
    backslashes as escapes only before a quote or the closing quote: those are doubled, and quotes escaped."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), str(path))
    return f"'{escaped}'"
