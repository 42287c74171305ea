"""What a run leaves behind: the run directory, summary, metrics, plots, and W&B."""
