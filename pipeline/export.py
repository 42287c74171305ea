"""`python -m pipeline.export`: see pipeline.cli.export."""

from pipeline.cli.export import cli

if __name__ == "__main__":
    cli()
