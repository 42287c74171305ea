"""Embedding rows a checkpoint never trained, for tokens the run's data uses: found on the loaded weights, then
trained (a few parameters per token) or refused.

Llama 3.x *base* checkpoints ship all-zero rows for `<|eot_id|>`, the header tokens and the reserved specials
(Unsloth #915). A model whose end-of-turn row is zero cannot learn to stop, and on a GPU Unsloth's SFTTrainer refuses
to start (unsloth_zoo's `fix_untrained_tokens` raises ValueError when such tokens are in the data and embed_tokens /
lm_head are frozen, as LoRA keeps them). We look for them with Unsloth's criterion on every backend and device, before
the trainer exists. `lora.untrained_tokens=train` trains those rows with PEFT's `trainable_token_indices` (the adapter
saves them, a merge writes them into the base), starting from the mean of the trained rows as Unsloth does when it
may train them; `refuse` stops with one line naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError

EPS = 1e-16  # Unsloth's threshold: a row whose values all lie within it of zero was never trained


@dataclass
class UntrainedTokens:
    ids: list[int]                   # untrained rows that training samples contain: these are trained
    tokens: list[str]
    template_only: list[str] = field(default_factory=list)   # untrained, named by the template, in no sample
    indices: dict[str, list[int]] = field(default_factory=dict)  # trainable_token_indices, by embedding module
    untrained_rows: int = 0          # all untrained rows of the checkpoint (the mean is taken over the others)
    mask: Any = None                 # a boolean per vocabulary row: untrained

    def notes(self) -> list[str]:
        if not self.template_only:
            return []
        return [f"the chat template names tokens whose embedding rows are untrained and that no training sample "
                f"contains: {', '.join(self.template_only)}; they stay untrained (a prompt with them reads zeros)"]

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "ids": self.ids, "trained_in": sorted(self.indices),
                "template_only": self.template_only, "untrained_rows": self.untrained_rows}


def untrained_rows(model: Any) -> Any:
    """A boolean per vocabulary row: Unsloth's criterion (unsloth_zoo.tokenizer_utils.fix_untrained_tokens). The
    input embedding row is zero within EPS, and the lm_head row is zero too or repeats among those rows (rounded
    to 3 decimals: Llama 3.1's untrained lm_head rows are equal, not zero)."""
    import torch

    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    size = min(embedding.shape[0], head.shape[0])
    with torch.no_grad():
        embedding, head = embedding[:size], head[:size]
        zero = (embedding.amax(1) <= EPS) & (embedding.amin(1) >= -EPS)
        head_zero = (head.amax(1) <= EPS) & (head.amin(1) >= -EPS)
        candidates = torch.where(zero)[0]
        if len(candidates):
            rounded = head[candidates].float().cpu().numpy().round(3)
            keys = [row.tobytes() for row in rounded]
            repeated = torch.tensor([keys.count(key) >= 2 for key in keys], device=head_zero.device)
            head_zero[candidates] |= repeated
    return (zero & head_zero).cpu()


def ids_in(datasets: list[Any], candidates: list[int]) -> set[int]:
    """Which of `candidates` appear among the datasets' input_ids (read in Arrow batches, indices honoured)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted, found = pa.array(candidates, type=pa.int64()), set()
    for dataset in datasets:
        for batch in dataset.with_format("arrow").iter(batch_size=8192):
            ids = pc.list_flatten(batch.column("input_ids")).cast(pa.int64())
            found.update(pc.unique(pc.filter(ids, pc.is_in(ids, value_set=wanted))).to_pylist())
    return found


def find_and_check(model: Any, run: Any, tokenizer: Any, datasets: list[Any]) -> UntrainedTokens | None:
    """The run's untrained tokens (see `find`), refused in one line with lora.untrained_tokens=refuse."""
    found = find(model, tokenizer, datasets, run.lora.modules_to_save)
    check(found, run)
    return found


def find(model: Any, tokenizer: Any, datasets: list[Any], modules_to_save: list[str] | None) -> UntrainedTokens | None:
    """The untrained rows of the loaded model that the data uses (None when there are none), with where PEFT must
    train them: the input embedding, and lm_head unless it is tied to it; a module that lora.modules_to_save already
    trains in full is left to that."""
    if model.get_input_embeddings() is None or model.get_output_embeddings() is None:
        return None  # no single embedding pair to look at (Unsloth skips these models too)
    rows = untrained_rows(model)
    candidates = [int(i) for i in rows.nonzero()[:, 0]]
    if not candidates:
        return None
    used = sorted(ids_in([d for d in datasets if d is not None], candidates))
    added = tokenizer.get_added_vocab()  # special tokens: the ones a template names by their text
    named = [t for t in tokenizer.convert_ids_to_tokens(candidates) if t in added]
    template = tokenizer.chat_template or ""
    template_only = [t for t in named if t in template and tokenizer.convert_tokens_to_ids(t) not in used]
    if not used:
        return UntrainedTokens([], [], template_only, untrained_rows=len(candidates), mask=rows) \
            if template_only else None
    in_full = set(modules_to_save or [])
    layers = [embedding_name(model, "input")]
    if not model.config.get_text_config().tie_word_embeddings:
        layers.append(embedding_name(model, "output"))
    indices = {layer: used for layer in layers if layer not in in_full}
    return UntrainedTokens(used, tokenizer.convert_ids_to_tokens(used), template_only, indices, len(candidates), rows)


def embedding_name(model: Any, side: str) -> str:
    """The leaf name of the input embedding or of lm_head (`embed_tokens`, `lm_head` for Llama), as PEFT's
    trainable_token_indices and lora.modules_to_save name it."""
    module = model.get_input_embeddings() if side == "input" else model.get_output_embeddings()
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def check(found: UntrainedTokens | None, run: Any) -> None:
    """lora.untrained_tokens=refuse: one line naming the tokens, before any adapter exists."""
    if found is None or not found.ids or run.lora.untrained_tokens != "refuse":
        return
    shown = ", ".join(found.tokens[:8]) + (f" and {len(found.tokens) - 8} more" if len(found.tokens) > 8 else "")
    raise ConfigError("lora.untrained_tokens", f"{run.model.name} has untrained (all-zero) embedding rows for "
                      f"{shown}, which the training data uses (through model.chat_template or the text): the model "
                      "could neither read nor write them", "train those rows: lora.untrained_tokens=train (a few "
                      "parameters per token, saved with the adapter), or use a checkpoint with them trained (the "
                      "Instruct one)")


def start_from_mean(peft_model: Any, found: UntrainedTokens | None) -> None:
    """Give the trainable rows the mean of the checkpoint's trained rows as their start (Unsloth's choice when it
    trains them itself; a zero row learns slowly): PEFT starts them from the checkpoint's zeros."""
    import torch

    if found is None or not found.indices:
        return
    rows = found.mask
    with torch.no_grad():
        for module in peft_model.modules():
            deltas = getattr(module, "trainable_tokens_delta", None)
            if not deltas or getattr(module, "tied_adapter", None) is not None:
                continue
            weight = module.get_base_layer().weight
            mean = weight[:len(rows)][~rows.to(weight.device)].float().mean(0)
            for delta in deltas.values():
                delta.copy_(mean.to(delta.dtype).expand_as(delta))
