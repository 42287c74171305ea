"""Trainer callbacks: metrics.jsonl (each step once, across resumes), the tokens trained, a graceful stop on SIGINT /
SIGTERM, and a guard against non-finite losses."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipeline.outputs.rundir import write_atomically

log = logging.getLogger(__name__)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class MetricsFile(TrainerCallback):
    """One JSON object per logged step in metrics.jsonl: what is logged at one step (loss, eval loss, the final
    train figures) goes into that step's row, which is on file as soon as it is logged."""

    def __init__(self, path: Path, resume_step: int | None = None, write: bool = True):
        self.path, self.write = path, write  # write=False: the rows in memory alone (ranks > 0 of a launch)
        rows = read_rows(path) if resume_step is not None else []
        # rows past the checkpoint were logged by the killed run: they come again
        self.rows: list[dict] = [r for r in rows if r["step"] <= resume_step] if resume_step is not None else []
        if write:
            write_atomically(path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._last_row_at = path.stat().st_size - len(json.dumps(self.rows[-1]) + "\n") if write and self.rows else 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        values = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        if self.rows and self.rows[-1]["step"] == state.global_step:
            self.rows[-1].update(values)  # the same step again: its row is rewritten, not repeated
        else:
            self.rows.append({"step": state.global_step, "epoch": state.epoch, **values})
            self._last_row_at = self.path.stat().st_size if self.write else 0
        if not self.write:
            return
        with self.path.open("r+") as f:
            f.truncate(self._last_row_at)
            f.seek(self._last_row_at)
            f.write(json.dumps(self.rows[-1]) + "\n")


def read_rows(path: Path) -> list[dict]:
    """The rows on file; a line cut short by a kill is left out (its step is logged again after the resume)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class TokenCounter(TrainerCallback):
    """Tokens seen (input tokens that are not padding) and trained (labels that carry loss) by the training forward
    passes, counted from each batch as the model receives it, on every backend (a preference trainer's batches carry
    no labels: trained is not counted, and its reference forwards, without gradients, are not seen).

    TRL counts tokens inside its compute_loss, which Unsloth's GPU trainer replaces, and transformers counts them only
    with include_num_input_tokens_seen, which Unsloth's config turns off. Counts stay on the device until they are
    logged (no extra synchronisation per step); each logged training row gets the running totals, and after a
    resume they continue from the row of the checkpoint's step. Put it before MetricsFile: it adds to the row."""

    KEYS = ("tokens_seen", "tokens_trained")

    def __init__(self, rows: list[dict] | None = None) -> None:
        last = next((r for r in reversed(rows or []) if "tokens_seen" in r), {})
        self.start = (int(last.get("tokens_seen", 0)), int(last.get("tokens_trained", 0)))
        self.session = [0, 0]   # this process's counts, read back from the device
        self._pending: list[Any] = []
        self._hook: Any = None
        self.labelled = bool(self.start[1])  # batches carry labels (SFT); a preference trainer's carry none

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None and self._hook is None:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        # evaluation, the run's own reference passes and a preference method's reference forwards (no gradients)
        if not module.training or ids is None or not torch.is_grad_enabled():
            return
        mask = kwargs.get("attention_mask")
        seen = mask.sum() if mask is not None and mask.dim() == 2 else torch.tensor(ids.numel(), device=ids.device)
        labels = kwargs.get("shift_labels")
        if labels is None and kwargs.get("labels") is not None:
            labels = kwargs["labels"][..., 1:]  # the first position predicts nothing (as transformers counts)
        self.labelled = self.labelled or labels is not None
        trained = (labels != -100).sum() if labels is not None else torch.zeros((), device=ids.device)
        self._pending.append(torch.stack([seen.to(trained.dtype), trained]))

    def totals(self) -> tuple[int, int]:
        """Running totals (the resumed part included)."""
        if self._pending:
            import torch

            added = torch.stack(self._pending).sum(0).tolist()
            self._pending = []
            self.session = [self.session[0] + int(added[0]), self.session[1] + int(added[1])]
        return self.start[0] + self.session[0], self.start[1] + self.session[1]

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs is not None and ("loss" in logs or "train_runtime" in logs):
            seen, trained = self.totals()
            logs.update({"tokens_seen": seen, **({"tokens_trained": trained} if self.labelled else {})})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.totals()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.session = all_ranks_sum(self.session)

    def facts(self, runtime: float, train_runtime: float | None) -> dict:
        """For summary.json: totals, and this process's tokens per second of its whole run and of training alone
        (all processes of a launch together)."""
        seen, trained = self.totals()
        return {"tokens_seen": seen, "tokens_trained": trained if self.labelled else None,
                "tokens_per_second": round(self.session[0] / runtime, 1) if self.session[0] and runtime else None,
                "train_tokens_per_second": round(self.session[0] / train_runtime, 1)
                if self.session[0] and train_runtime else None}


def all_ranks_sum(values: list[int]) -> list[int]:
    """`values` summed over the processes of a launch (itself when there is one)."""
    return _all_ranks(values, "SUM")


def all_ranks_max(value: int) -> int:
    """The largest of `value` over the processes of a launch (itself when there is one)."""
    return _all_ranks([value], "MAX")[0]


def _all_ranks(values: list[int], op: str) -> list[int]:
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    on_gpu = torch.distributed.get_backend() == "nccl"
    tensor = torch.tensor(values, device=f"cuda:{torch.cuda.current_device()}" if on_gpu else "cpu")
    torch.distributed.all_reduce(tensor, op=getattr(torch.distributed.ReduceOp, op))
    return [int(v) for v in tensor.tolist()]


class GracefulStop(TrainerCallback):
    """SIGINT / SIGTERM finish the current step, save a complete checkpoint and stop training; a second one
    stops at once (KeyboardInterrupt). SIGUSR2, when a scheduler's handler waits for it (submitit's on SLURM
    preemption or time limit: requeue, then exit at once), does the same first; the scheduler's handler is `chained`,
    to be called once the run is saved and reported."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.chained: Any = None
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        return EXIT_CODES.get(self.signal, 128 + self.signal) if self.signal is not None else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {s: signal.signal(s, self._request_stop) for s in EXIT_CODES}
            scheduler = signal.getsignal(signal.SIGUSR2)
            if callable(scheduler):  # a Python handler someone installed: ours first, then theirs
                self._previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, self._request_stop)
                self.chained = scheduler

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            self.restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signal = signum
        log.warning("%s: finishing this step, saving a checkpoint, then stopping (again to stop at once)",
                    signal.Signals(signum).name)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # under a launch the signal reaches the processes one by one: they agree to stop after the same step (one
        # stopping a step early would leave the others waiting in the next step's collective)
        agreed = all_ranks_max(self.signal or 0)
        if agreed:
            self.signal = self.signal or agreed
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class NumericalGuard(TrainerCallback):
    """A non-finite loss or gradient norm stops training at once, and nothing from that step on is saved. Under fp16
    mixed precision an infinite gradient norm is the loss scaler's overflow: that step is skipped and the scale
    lowered (torch's GradScaler), so there only the loss counts (and the adapter weights, checked at the end)."""

    WATCHED = ("loss", "grad_norm", "eval_loss")

    def __init__(self) -> None:
        self.diverged: tuple[int, str, float] | None = None  # (step, what, value)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        for key in self.WATCHED:
            if key == "grad_norm" and getattr(args, "fp16", False):
                continue
            value = (logs or {}).get(key)
            if self.diverged is None and isinstance(value, float) and not math.isfinite(value):
                self.diverged = (state.global_step, key, value)
        if self.diverged is not None:
            control.should_training_stop = True
            control.should_save = False  # no checkpoint of a broken model
            control.should_evaluate = False


class FirstStep(TrainerCallback):
    """When the first step began (wall clock): what the set-up before it cost is in summary.json."""

    def __init__(self) -> None:
        self.began: float | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.began is None:
            self.began = time.time()


@dataclass
class RunCallbacks:
    """The callbacks of one training run."""
    metrics: MetricsFile
    tokens: TokenCounter
    graceful: GracefulStop
    guard: NumericalGuard
    first_step: FirstStep

    @classmethod
    def open(cls, path: Path, resume_step: int | None, write: bool) -> RunCallbacks:
        metrics = MetricsFile(path, resume_step, write=write)
        return cls(metrics, TokenCounter(metrics.rows), GracefulStop(), NumericalGuard(), FirstStep())

    @property
    def all(self) -> list[TrainerCallback]:
        # tokens first: it adds to the rows written
        return [self.tokens, self.metrics, self.graceful, self.guard, self.first_step]
