"""The model: backends (load + LoRA), target-module resolution, the weightless skeleton, chat templates."""
