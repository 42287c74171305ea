"""Price a LoRA run without weights: count parameters on the model's layout (pipeline/model/layout.py), estimate VRAM.

Counts are exact (a LoRA pair on a layer with `in` inputs and `out` outputs adds r * (in + out) weights, the same
number PEFT creates). The VRAM estimate is a sum of named parts for one GPU under the trainer's settings; see
docs/vram-estimates.md for how it compares with published measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.model import targets
from pipeline.model.layout import layout_of

GIB = 2**30
NF4_BLOCK = 64            # bitsandbytes 4-bit block size: one absmax per 64 weights
DOUBLE_QUANT_BLOCK = 256  # double quant: absmax stored in 8 bits, one fp32 constant per 256 of them
# bytes of optimizer state per trainable parameter
OPTIMIZER_BYTES = {"adamw_torch": 8, "adamw_torch_fused": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2,
                   "paged_adamw_8bit": 2, "lion_8bit": 1, "paged_lion_8bit": 1, "adafactor": 0.1, "sgd": 0}
ACTIVATION_BYTES = 2      # activations are bf16 under mixed precision


def lora_parameter_count(shapes: dict[str, tuple[int, int]], target_modules: list[str], r: int) -> tuple[int, int]:
    """(trainable LoRA parameters, adapted layers) for PEFT's matching rule."""
    adapted = [n for n in shapes if any(targets.matches(n, t) for t in target_modules)]
    return sum(r * (shapes[n][0] + shapes[n][1]) for n in adapted), len(adapted)


def expert_lora_count(model: Any, target_parameters: list[str], r: int) -> int:
    """LoRA on a fused (experts, out, in) weight: PEFT gives each expert its own rank-r pair."""
    total = 0
    for name, (experts, out_features, in_features) in layout_of(model).experts.items():
        if any(targets.matches(name, t) for t in target_parameters):
            total += experts * r * (in_features + out_features)
    return total


@dataclass
class Estimate:
    target_modules: list[str]
    adapted_layers: int
    trainable_params: int
    total_params: int
    adapter_mb: float
    vram_parts: dict[str, float] = field(default_factory=dict)   # GiB each
    notes: list[str] = field(default_factory=list)

    @property
    def trainable_pct(self) -> float:
        return 100 * self.trainable_params / self.total_params

    @property
    def vram_gib(self) -> float:
        return sum(self.vram_parts.values())

    def as_dict(self) -> dict:
        return {"target_modules": self.target_modules, "adapted_layers": self.adapted_layers,
                "trainable_params": self.trainable_params, "total_params": self.total_params,
                "trainable_pct": round(self.trainable_pct, 4), "adapter_mb": round(self.adapter_mb, 2),
                "vram_gib": round(self.vram_gib, 2), "vram_parts": {k: round(v, 3) for k, v in self.vram_parts.items()},
                "notes": self.notes}


def base_weight_bytes(model: Any, shapes: dict[str, tuple[int, int]], bits: int, double_quant: bool,
                      other_bytes: int = 2) -> float:
    """Frozen base weights as stored: quantized linear layers, and the rest (embeddings, lm_head, norms) at
    `other_bytes` each (16-bit; fp32 after PEFT's k-bit preparation on the hf backend)."""
    quantized = {n: s for n, s in shapes.items() if not n.endswith("lm_head")} if bits in (4, 8) else {}
    quantized_params = sum(a * b for a, b in quantized.values())
    other_params = layout_of(model).parameters - quantized_params
    if bits == 4:
        per_weight = 0.5 + (1 + 4 / DOUBLE_QUANT_BLOCK) / NF4_BLOCK if double_quant else 0.5 + 4 / NF4_BLOCK
    else:
        per_weight = 1.0
    scales = sum(b for _, b in quantized.values()) * 4 if bits == 8 else 0  # one fp32 scale per output row
    return quantized_params * per_weight + scales + other_params * other_bytes


# per sample: sequences through the model with gradients, and forwards without them (the reference, KTO's KL term)
METHOD_PASSES = {"sft": (1, 0), "dpo": (2, 2), "orpo": (2, 0), "simpo": (2, 0), "kto": (1, 3)}


def method_passes(run: Any) -> tuple[int, int]:
    method = getattr(run, "method", None)
    return METHOD_PASSES[method.name if method is not None else "sft"]


def method_note(run: Any) -> str | None:
    """What the method costs beside SFT, in words: memory grows with the sequences that keep gradients; the forwards
    without them keep no activations (their log-probabilities are reduced before the policy's forward), only time."""
    name = run.method.name if getattr(run, "method", None) is not None else "sft"
    if name == "sft":
        return None
    graded, free = METHOD_PASSES[name]
    what = {"dpo": "chosen and rejected answers go through the model together, and the reference (the adapter "
                   "switched off) scores both without gradients",
            "orpo": "chosen and rejected answers go through the model together; no reference model",
            "simpo": "chosen and rejected answers go through the model together; no reference model",
            "kto": "each answer, then without gradients a mismatched answer for the KL term, and the reference on "
                   "both"}[name]
    # a forward is about a third of a training step's compute (forward and backward)
    extra = f"; its {free} forwards without gradients add about {free / (3 * graded):.0%} to a step's compute and " \
            "keep no memory" if free else ""
    return f"method={name}: {what}: priced as {graded} sequence{'s' if graded > 1 else ''} a sample{extra}"


def activation_bytes(config: Any, run: Any, target_modules: list[str], seq_len: int) -> float:
    """Activations kept for backward for one micro-batch, in bf16.

    Per token per layer, backward always keeps the norm inputs (2h), attention's q, k, v and output
    (2h + 2 kv) and the MLP's gate, up and activation (3i). A frozen linear layer needs no input for backward,
    but a LoRA-adapted one does: the attention input (h) once any of q/k/v is adapted, the MLP input (h) once
    gate/up is, the down input (i) when down is, plus r per adapter. With gradient checkpointing only each
    layer's input (h) is kept, plus one layer's full set while it is recomputed.
    """
    h = config.hidden_size
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    heads = config.num_attention_heads
    kv_dim = (getattr(config, "num_key_value_heads", None) or heads) * (h // heads)
    names = " ".join(target_modules)
    lora_inputs = (h * any(k in names for k in ("q_proj", "k_proj", "v_proj", "qkv", "c_attn", "query_key_value"))
                   + h * any(k in names for k in ("gate", "up_proj", "c_fc", "fc1", "dense_h_to_4h"))
                   + inter * any(k in names for k in ("down", "fc2", "mlp.c_proj", "dense_4h_to_h")))
    per_token_layer = 4 * h + 2 * kv_dim + 3 * inter + lora_inputs + run.lora.r * len(target_modules)
    tokens = run.trainer.per_device_train_batch_size * method_passes(run)[0] * seq_len
    layers = config.num_hidden_layers
    if run.trainer.gradient_checkpointing:
        return (layers * h + per_token_layer) * tokens * ACTIVATION_BYTES
    return layers * per_token_layer * tokens * ACTIVATION_BYTES


def sequence_length(run: Any) -> int:
    """The token limit training really uses (data.max_length, else the model's max_seq_length)."""
    return run.data.max_length or run.model.max_seq_length


LOSS_CHUNKS = 8  # chunked cross-entropy (Unsloth's fused loss on GPU, torchtune's CEWithChunkedOutputLoss)


def logits_bytes(config: Any, run: Any, chunked: bool, seq_len: int) -> float:
    """The output layer's logits: bf16, the fp32 copy the loss works on, and its gradient.

    A chunked loss only ever holds one chunk of them.
    """
    tokens = run.trainer.per_device_train_batch_size * method_passes(run)[0] * seq_len
    return tokens * config.vocab_size * (2 + 4 + 4) / (LOSS_CHUNKS if chunked else 1)


def estimate(model: Any, run: Any, target_modules: list[str], notes: list[str] | None = None,
             target_parameters: list[str] | None = None, chunked_loss: bool | None = None,
             seq_len: int | None = None) -> Estimate:
    """Parameter counts and a VRAM estimate for one choice of target modules (and MoE expert weights).

    `chunked_loss` defaults to the backend's behaviour on GPU: Unsloth chunks its cross-entropy, plain HF does not.
    `seq_len` (tokens per sample) defaults to the limit, `sequence_length(run)`.
    """
    seq_len = seq_len or sequence_length(run)
    layout = layout_of(model)
    if chunked_loss is None:
        chunked_loss = run.backend == "unsloth"
    shapes = layout.linear
    trainable, adapted = lora_parameter_count(shapes, target_modules, run.lora.r)
    trainable += expert_lora_count(layout, target_parameters or [], run.lora.r)
    for extra in run.lora.modules_to_save or []:
        # trained in full as a copy, so a weight tied to the embeddings counts again
        trainable += layout.module_parameters(extra)
    base_params = layout.parameters
    quantized = run.quantization.bits in (4, 8)
    # adapters train in fp32 on both backends (PEFT's dtype; TRL's bf16 cast is undone on hf, removed by Unsloth)
    adapter_bytes = 4
    # PEFT's prepare_model_for_kbit_training (hf backend) casts every weight it does not quantize to fp32
    other_bytes = 4 if quantized and run.backend == "hf" else 2
    t = run.trainer
    optim = "adamw_8bit" if t.optim == "auto" else t.optim
    parts = {
        "base_weights": base_weight_bytes(layout, shapes, run.quantization.bits, run.quantization.double_quant,
                                          other_bytes),
        "lora_weights": trainable * adapter_bytes,
        "lora_gradients": trainable * adapter_bytes,
        "optimizer_states": trainable * OPTIMIZER_BYTES.get(optim, 8),
        "activations": activation_bytes(layout.config, run, target_modules, seq_len),
        "logits": logits_bytes(layout.config, run, chunked_loss, seq_len),
    }
    names = list(target_modules) + list(target_parameters or [])
    priced = [note for note in (method_note(run),) if note]
    return Estimate(target_modules=names, adapted_layers=adapted, trainable_params=trainable,
                    total_params=base_params + trainable, adapter_mb=trainable * adapter_bytes / 2**20,
                    vram_parts={k: v / GIB for k, v in parts.items()}, notes=[*(notes or []), *priced])
