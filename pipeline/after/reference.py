"""What a run records at its end so that an export can prove it carries the trained model: a few held-out samples
(token ids and loss labels), the loss of each of their trained tokens under the trained model and under its base
(adapter off), the dtype the logits came out in, and a held-out conversation with the text the chat template made of
it in training (an export, its GGUF and `generate` must render it the same: the template served is the one trained).

An export whose per-token losses are not the recorded ones was merged from a changed adapter or onto another base.
How near is near enough depends on the numerics of the two sides: on a GPU Unsloth's model gives its logits in bf16
(lm_head and norms in bf16), while the reproduction through transformers and PEFT's k-bit preparation computes them
in float32. `reproduction_tolerance` bounds what rounding the logits to those dtypes can do to each token's loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_FILE = "reference.json"  # saved inside adapter/, so it travels with the adapter
SAMPLES = 4
UNIT_ROUNDOFF = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}  # relative rounding of a value
REPRODUCE_FLOOR = 0.01  # per-token loss: the least a reproduction may be off by (seen in float32 here: 0.0)


def pick_samples(dataset: Any, count: int = SAMPLES) -> list[dict]:
    """The first `count` samples (eval split when there is one): token ids and their loss labels."""
    rows = dataset.select(range(min(count, len(dataset))))
    return [{"input_ids": list(row["input_ids"]), "labels": list(row["labels"])} for row in rows]


def preference_samples(dataset: Any, tokenizer: Any, kind: str, count: int = SAMPLES) -> list[dict]:
    """Preference rows as `pick_samples` gives SFT ones: the prompt, then the chosen (or labelled) answer, which
    carries the loss; tokenized as TRL's trainer for them does."""
    from pipeline.compat import trl_preference_tokenize

    rows = trl_preference_tokenize(dataset.select(range(min(count, len(dataset)))), tokenizer, kind)
    answer = "chosen_ids" if "chosen_ids" in rows.column_names else "completion_ids"
    return [{"input_ids": list(row["prompt_ids"]) + list(row[answer]),
             "labels": [-100] * len(row["prompt_ids"]) + list(row[answer])} for row in rows]


@dataclass
class Scored:
    losses: list[float]       # the loss of every trained token, in order
    sensitivity: list[float]  # per token: how far its loss can move per unit of relative rounding of the logits
    logits_dtype: str         # the dtype the model's logits came out in


def score(model: Any, samples: list[dict]) -> Scored:
    """Per-token losses of `samples` (one sample at a time: no padding to get wrong), with each token's sensitivity
    to rounding: rounding every logit z_j by at most a relative u moves -log p_y by at most
    u * (sum over j != y of p_j |z_j| + (1 - p_y) |z_y|), to first order."""
    import torch

    device = next(model.parameters()).device
    losses: list[float] = []
    sensitivity: list[float] = []
    dtype = "float32"
    with torch.no_grad():
        for sample in samples:
            raw = model(input_ids=torch.tensor([sample["input_ids"]], device=device)).logits[0, :-1]
            dtype = str(raw.dtype).removeprefix("torch.")
            labels = torch.tensor(sample["labels"][1:], device=device)
            trained = labels != -100
            logits = raw[trained].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            target = labels[trained][:, None]
            losses += (-log_probs.gather(1, target)[:, 0]).tolist()
            probs, size = log_probs.exp(), logits.abs()
            p_target, z_target = probs.gather(1, target)[:, 0], size.gather(1, target)[:, 0]
            others = (probs * size).sum(-1) - p_target * z_target
            sensitivity += (others + (1 - p_target) * z_target).tolist()
    return Scored(losses, sensitivity, dtype)


def token_losses(model: Any, samples: list[dict]) -> list[float]:
    """The loss of every trained token of every sample, in order."""
    return score(model, samples).losses


def record(model: Any, samples: list[dict]) -> dict:
    """Per-token losses on `samples` of the trained model and of its base (the PEFT model, adapter disabled), and
    the dtype its logits come out in."""
    was_training = model.training
    model.eval()
    trained = score(model, samples)
    with model.disable_adapter():
        base = token_losses(model, samples)
    model.train(was_training)
    return {"samples": samples, "trained": trained.losses, "base": base, "logits_dtype": trained.logits_dtype}


def reproduction_tolerance(reference: dict, reproduced: Scored) -> float:
    """How far the reproduced per-token losses may sit from the recorded ones on average: the most that rounding the
    logits to the recording's dtype and to the reproduction's can move them (a reference recorded before its dtype
    was: float32), and never less than REPRODUCE_FLOOR."""
    u = UNIT_ROUNDOFF[reference.get("logits_dtype", "float32")] + UNIT_ROUNDOFF[reproduced.logits_dtype]
    return max(REPRODUCE_FLOOR, u * mean(reproduced.sensitivity))


def template_probe(tokenizer: Any, conversation: dict | None) -> dict:
    """A held-out conversation and the text the run's chat template rendered of it (nothing for text data)."""
    if conversation is None:
        return {}
    from pipeline.data.turns import render

    rendered = render(tokenizer, conversation["messages"], conversation.get("tools"))
    return {"conversation": conversation, "rendered": rendered}


def renders_as_trained(tokenizer: Any, reference: dict) -> bool | None:
    """Whether `tokenizer` renders the recorded conversation byte for byte as training did (None: nothing recorded)."""
    if "conversation" not in reference:
        return None
    from pipeline.data.turns import render

    conversation = reference["conversation"]
    return render(tokenizer, conversation["messages"], conversation.get("tools")) == reference["rendered"]


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
