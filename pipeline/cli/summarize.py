"""`python -m pipeline.summarize <sweep dir>` (`ft-summarize`): rebuild a sweep's summary table, csv and plot from its
job directories (a sweep still running, or one whose jobs ran elsewhere)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import EXIT_USAGE


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line too (argparse prints its usage block, then the error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message}. See {self.prog} --help.\n")
        sys.exit(EXIT_USAGE)


def cli(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m pipeline.summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. outputs/multirun/<date>/<time>")
    sweep_dir = parser.parse_args(argv).sweep_dir
    from pipeline.outputs import sweep

    rows = sweep.collect(sweep_dir) if sweep_dir.is_dir() else []
    if not rows:
        sys.stderr.write(f"error: sweep_dir: {sweep_dir} holds no sweep jobs (no numbered job directories and no "
                         f"{sweep.JOBS_FILE}). Give the directory a multirun wrote (hydra.sweep.dir).\n")
        sys.exit(EXIT_USAGE)
    sweep.write(sweep_dir, rows)
    print("\n".join(sweep.describe(rows, sweep_dir)))


if __name__ == "__main__":
    cli()
