"""What a run records at its end so that an export can prove it carries the trained model: a few held-out samples
(token ids and loss labels), and the loss of each of their trained tokens under the trained model and under its
base (adapter off).

An export whose per-token losses are not the recorded ones was merged from a changed adapter or onto another base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REFERENCE_FILE = "reference.json"  # saved inside adapter/, so it travels with the adapter
SAMPLES = 4


def pick_samples(dataset: Any, count: int = SAMPLES) -> list[dict]:
    """The first `count` samples (eval split when there is one): token ids and their loss labels."""
    rows = dataset.select(range(min(count, len(dataset))))
    return [{"input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for row in rows]


def token_losses(model: Any, samples: list[dict]) -> list[float]:
    """The loss of every trained token of every sample, in order (one sample at a time: no padding to get wrong)."""
    import torch

    device = next(model.parameters()).device
    losses: list[float] = []
    with torch.no_grad():
        for sample in samples:
            logits = model(input_ids=torch.tensor([sample["input_ids"]], device=device)).logits[0, :-1].float()
            labels = torch.tensor(sample["labels"][1:], device=device)
            trained = labels != -100
            log_probs = torch.log_softmax(logits[trained], dim=-1)
            losses += (-log_probs.gather(1, labels[trained][:, None])[:, 0]).tolist()
    return losses


def record(model: Any, samples: list[dict]) -> dict:
    """Per-token losses on `samples` of the trained model and of its base (the PEFT model, adapter disabled)."""
    was_training = model.training
    model.eval()
    trained = token_losses(model, samples)
    with model.disable_adapter():
        base = token_losses(model, samples)
    model.train(was_training)
    return {"samples": samples, "trained": trained, "base": base}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_gap(a: list[float], b: list[float]) -> float:
    """Mean absolute difference, token by token."""
    return mean([abs(x - y) for x, y in zip(a, b, strict=True)])


def tolerance(reference: dict, base_now: list[float]) -> float:
    """How far a merged 16-bit model's per-token losses may sit from those recorded on the 4-bit base it trained on:
    three times the drift the base itself shows between the two (the noise of quantization), or a quarter of what
    training moved them, whichever is larger."""
    noise = mean_gap(base_now, reference["base"])
    return max(3 * noise, 0.25 * mean_gap(reference["base"], reference["trained"]), 0.01)


def read(adapter_dir: Path) -> dict | None:
    path = adapter_dir / REFERENCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
