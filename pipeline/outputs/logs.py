"""What reaches the console: this pipeline's lines (and Hydra's); the libraries' logs, warnings and start-up prints go
to the run's log file only, so nothing stands between the user and a one-line error or the header."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

CONSOLE_LOGGERS = ("pipeline", "hydra", "__main__")


class OursOnly(logging.Filter):
    """Console filter (conf/hydra/job_logging/pipeline.yaml): records of our own loggers pass, the rest stays in the
    log file. The other processes of a launch show warnings only: rank 0 prints the header and summary once."""

    def __init__(self) -> None:
        super().__init__()
        from pipeline.config.launch import is_main_process

        self.lowest = logging.INFO if is_main_process() else logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in CONSOLE_LOGGERS and record.levelno >= self.lowest


@contextmanager
def prints_to_log(logger_name: str) -> Iterator[None]:
    """Lines a library prints (Unsloth's banner on import and load) go to the log file as `logger_name` records."""
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                logging.getLogger(logger_name).info(line.strip())


def route_library_logs() -> None:
    """Python warnings and transformers' own stderr handler go through logging (the filter above keeps them in the
    file). Called once transformers is imported: Unsloth must be imported before it."""
    from transformers.utils import logging as transformers_logging

    logging.captureWarnings(True)
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()


def quiet_progress_bars() -> None:
    """transformers' loading and saving bars, for commands whose output is a few lines (export)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
