"""Ctrl-C or SIGTERM outside the training loop (during set-up, saving, reporting): stop at once with one line.

Inside the loop `callbacks.GracefulStop` takes over and saves a checkpoint first. A library's bare `except:` (Unsloth's
import has some) can swallow the KeyboardInterrupt a signal raises, so the request is also kept and raised again at the
recipe's next stage boundary (`raise_if_requested`).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

MESSAGES = {
    signal.SIGTERM: "interrupted: SIGTERM outside the training loop; complete checkpoints stay, resume=auto continues",
    signal.SIGINT: "interrupted: stopped at once; complete checkpoints stay and resume=auto continues",
}
requested: list[int] = []


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal outside the training loop; exit code 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(MESSAGES[signum])
        self.exit_code = 128 + signum


def _stop(signum: int, frame: Any) -> None:
    requested.append(signum)
    raise Stopped(signum)


def install() -> None:
    for signum in MESSAGES:
        signal.signal(signum, _stop)
    sys.unraisablehook = _quiet_if_stopped


def _quiet_if_stopped(unraisable: Any) -> None:
    """A signal that lands in a weakref callback or `__del__` is "ignored" by Python with a printed traceback; the
    stop is raised again at the next stage boundary, so only other unraisable errors are printed."""
    if not isinstance(unraisable.exc_value, Stopped):
        sys.__unraisablehook__(unraisable)


def raise_if_requested() -> None:
    if requested:
        raise Stopped(requested[0])
