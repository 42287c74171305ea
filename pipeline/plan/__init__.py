"""Pricing a run without weights: exact LoRA counts on the skeleton, a VRAM estimate by parts, presets side by side."""
