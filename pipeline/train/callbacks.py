"""Trainer callbacks: metrics.jsonl (each step once, across resumes) and a graceful stop on SIGINT / SIGTERM."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
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


class GracefulStop(TrainerCallback):
    """SIGINT / SIGTERM finish the current step, save a complete checkpoint and stop training; a second one
    stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        return EXIT_CODES.get(self.signal) if self.signal is not None else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {s: signal.signal(s, self._request_stop) for s in EXIT_CODES}

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            self.restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signal = signum
        log.warning("%s: finishing this step, saving a checkpoint, then stopping (again to stop at once)",
                    signal.Signals(signum).name)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class NumericalGuard(TrainerCallback):
    """A non-finite loss or gradient norm stops training at once, and nothing from that step on is saved."""

    WATCHED = ("loss", "grad_norm", "eval_loss")

    def __init__(self) -> None:
        self.diverged: tuple[int, str, float] | None = None  # (step, what, value)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        for key in self.WATCHED:
            value = (logs or {}).get(key)
            if self.diverged is None and isinstance(value, float) and not math.isfinite(value):
                self.diverged = (state.global_step, key, value)
        if self.diverged is not None:
            control.should_training_stop = True
            control.should_save = False  # no checkpoint of a broken model
            control.should_evaluate = False
