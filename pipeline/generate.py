"""`python -m pipeline.generate`: see pipeline.cli.generate."""

from pipeline.cli.generate import cli

if __name__ == "__main__":
    cli()
