"""A model's layout: its linear layers, fused expert weights and parameter counts, all that pricing and target
checks read.

Read from a built model (the meta-device skeleton, or loaded weights), or written out from a preset's architecture
numbers for the families whose layers are known here, so `plan` needs neither torch nor transformers. A written-out
layout equals the skeleton's, name for name and shape for shape (tests/test_layout.py checks every shipped preset);
an architecture with a key that could change a shape and is not read here is built as a skeleton instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any


@dataclass
class Layout:
    config: Any                                   # model_type, hidden_size, ... (attribute access)
    linear: dict[str, tuple[int, int]]            # every linear-like layer: name -> (in_features, out_features)
    experts: dict[str, tuple[int, int, int]]      # fused 3-D expert weights: name -> (experts, out, in)
    owned: dict[str, int]                         # every module owning parameters -> how many (a tied weight in each)
    parameters: int                               # all parameters, a tied weight once

    def module_parameters(self, target: str) -> int:
        """Parameters of every module named `target` or ending in `.target` (PEFT's modules_to_save rule)."""
        total = 0
        for name, count in self.owned.items():
            parts = name.split(".")
            # each ancestor (or the module itself) that matches counts the module once
            total += count * sum(1 for i in range(1, len(parts) + 1)
                                 if ".".join(parts[:i]) == target or ".".join(parts[:i]).endswith("." + target))
        return total


def layout_of(model: Any) -> Layout:
    """The layout of a built model (a Layout is returned as it is)."""
    if isinstance(model, Layout):
        return model
    import torch

    linear, experts, owned = {}, {}, {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Linear4bit", "Linear8bitLt"):
            linear[name] = (module.in_features, module.out_features)
        elif kind == "Conv1D":  # GPT-2 stores (in, out)
            linear[name] = tuple(module.weight.shape)
        count = sum(p.numel() for p in module.parameters(recurse=False))
        if count:
            owned[name] = count
    for name, param in model.named_parameters():
        if param.ndim == 3:
            experts[name] = tuple(param.shape)
    return Layout(config=model.config, linear=linear, experts=experts, owned=owned,
                  parameters=sum(p.numel() for p in model.parameters()))


# --- written out from architecture numbers --------------------------------------------------------------------

REQUIRED = {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "tie_word_embeddings"}
# keys that change no shape (a user's preset may carry them from config.json)
NEUTRAL = {"num_experts_per_tok", "norm_topk_prob", "router_aux_loss_coef", "output_router_logits", "rope_theta",
           "rope_scaling", "rope_parameters", "max_position_embeddings", "original_max_position_embeddings",
           "rms_norm_eps", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "hidden_act",
           "hidden_activation", "initializer_range", "use_cache", "attention_dropout", "bos_token_id", "eos_token_id",
           "pad_token_id", "torch_dtype", "dtype", "final_logit_softcapping", "attn_logit_softcapping",
           "query_pre_attn_scalar", "architectures", "transformers_version"}
# model_type -> (keys it reads beyond REQUIRED, head_dim when not given: None means it must be given)
FAMILIES: dict[str, tuple[set[str], str | None]] = {
    "llama": ({"num_key_value_heads", "head_dim"}, "hidden/heads"),
    "mistral": ({"num_key_value_heads", "head_dim"}, "hidden/heads"),
    "qwen2": ({"num_key_value_heads", "head_dim"}, "hidden/heads"),
    "phi3": ({"num_key_value_heads", "head_dim"}, "hidden/heads"),
    "qwen3": ({"num_key_value_heads", "head_dim"}, None),
    "gemma2": ({"num_key_value_heads", "head_dim"}, None),
    "qwen3_moe": ({"num_key_value_heads", "head_dim", "moe_intermediate_size", "num_experts", "decoder_sparse_step",
                   "mlp_only_layers"}, None),
}
MOE_REQUIRED = {"moe_intermediate_size", "num_experts", "decoder_sparse_step", "mlp_only_layers"}


def from_architecture(architecture: dict) -> Layout | None:
    """The layout the preset's numbers build, without building it; None when they are not all read here."""
    arch = dict(architecture)
    model_type = arch.get("model_type")
    if model_type not in FAMILIES:
        return None
    reads, head_dim_default = FAMILIES[model_type]
    required = REQUIRED | (MOE_REQUIRED if model_type == "qwen3_moe" else set()) | (
        set() if head_dim_default else {"head_dim"})
    if not required <= arch.keys() or arch.keys() - REQUIRED - reads - NEUTRAL:
        return None
    if head_dim_default is None and arch["head_dim"] is None:
        return None  # transformers' own default for this family decides
    h, heads = arch["hidden_size"], arch["num_attention_heads"]
    arch.setdefault("num_key_value_heads", heads)
    if arch["num_key_value_heads"] is None:
        arch["num_key_value_heads"] = heads
    if arch.get("head_dim") is None:
        arch["head_dim"] = h // heads
    owned: dict[str, int] = {"model.embed_tokens": arch["vocab_size"] * h}
    linear: dict[str, tuple[int, int]] = {}
    experts: dict[str, tuple[int, int, int]] = {}
    for layer in range(arch["num_hidden_layers"]):
        _decoder_layer(f"model.layers.{layer}", layer, arch, linear, experts, owned)
    owned["model.norm"] = h
    linear["lm_head"] = (h, arch["vocab_size"])
    owned["lm_head"] = h * arch["vocab_size"]
    tied = h * arch["vocab_size"] if arch["tie_word_embeddings"] else 0
    return Layout(config=SimpleNamespace(**arch), linear=linear, experts=experts, owned=owned,
                  parameters=sum(owned.values()) - tied)


def _decoder_layer(prefix: str, index: int, arch: dict, linear: dict, experts: dict, owned: dict) -> None:
    """One decoder layer's modules, in the order transformers defines them."""
    model_type, h, d = arch["model_type"], arch["hidden_size"], arch["head_dim"]
    q, kv, inter = arch["num_attention_heads"] * d, arch["num_key_value_heads"] * d, arch["intermediate_size"]
    attention = f"{prefix}.self_attn"
    if model_type == "phi3":
        modules = {f"{attention}.o_proj": (q, h, False), f"{attention}.qkv_proj": (h, q + 2 * kv, False)}
    else:
        bias = model_type == "qwen2"  # Qwen2's q, k and v carry a bias
        modules = {f"{attention}.q_proj": (h, q, bias), f"{attention}.k_proj": (h, kv, bias),
                   f"{attention}.v_proj": (h, kv, bias), f"{attention}.o_proj": (q, h, False)}
    for name, (fan_in, fan_out, bias) in modules.items():
        linear[name] = (fan_in, fan_out)
        owned[name] = fan_in * fan_out + (fan_out if bias else 0)
    if model_type in ("qwen3", "qwen3_moe"):
        owned[f"{attention}.q_norm"] = owned[f"{attention}.k_norm"] = d
    mlp = f"{prefix}.mlp"
    if model_type == "qwen3_moe" and _sparse(index, arch):
        n, moe = arch["num_experts"], arch["moe_intermediate_size"]
        experts[f"{mlp}.experts.gate_up_proj"] = (n, 2 * moe, h)
        experts[f"{mlp}.experts.down_proj"] = (n, h, moe)
        owned[f"{mlp}.experts"] = n * 2 * moe * h + n * h * moe
        owned[f"{mlp}.gate"] = n * h  # the router: a weight, not a linear layer
    else:
        shapes = {f"{mlp}.gate_up_proj": (h, 2 * inter)} if model_type == "phi3" else {
            f"{mlp}.gate_proj": (h, inter), f"{mlp}.up_proj": (h, inter)}
        shapes[f"{mlp}.down_proj"] = (inter, h)
        for name, (fan_in, fan_out) in shapes.items():
            linear[name] = (fan_in, fan_out)
            owned[name] = fan_in * fan_out
    norms = ["input_layernorm", "post_attention_layernorm"]
    if model_type == "gemma2":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for norm in norms:
        owned[f"{prefix}.{norm}"] = h


def _sparse(index: int, arch: dict) -> bool:
    """Qwen3-MoE's rule for a layer with experts (the others have a dense MLP)."""
    return index not in arch["mlp_only_layers"] and arch["num_experts"] > 0 and \
        (index + 1) % arch["decoder_sparse_step"] == 0
