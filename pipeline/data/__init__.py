"""Data: sources -> formats (normalized to TRL's forms) -> prepare (TRL's masks, length policy) -> cache."""
