"""`python -m pipeline.summarize <sweep dir>`: see pipeline.cli.summarize."""

from pipeline.cli.summarize import cli

if __name__ == "__main__":
    cli()
