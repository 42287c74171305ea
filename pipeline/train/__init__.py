"""Training: the recipe in named stages, TRL's trainer, callbacks, resume, precision."""
