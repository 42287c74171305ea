"""`python -m pipeline.train`: see pipeline.cli.train."""

from pipeline.cli.train import cli

cli()
