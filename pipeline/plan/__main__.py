"""`python -m pipeline.plan`: see pipeline.cli.plan."""

from pipeline.cli.plan import cli

cli()
