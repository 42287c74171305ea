"""`python -m pipeline.evaluate`: see pipeline.cli.evaluate."""

from pipeline.cli.evaluate import cli

if __name__ == "__main__":
    cli()
