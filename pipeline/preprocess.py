"""`python -m pipeline.preprocess`: see pipeline.cli.preprocess."""

from pipeline.cli.preprocess import cli

if __name__ == "__main__":
    cli()
