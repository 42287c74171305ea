"""Presets resolve to real module names on every supported family, and plan's counts equal PEFT's on real models."""

from __future__ import annotations

import pytest
from conftest import target_presets

from pipeline.model import targets
from pipeline.model.skeleton import build_meta_model
from pipeline.plan import estimate

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
# transformers config class name -> extra fields; each builds a tiny random model offline
FAMILIES = {
    "LlamaConfig": dict(intermediate_size=64, num_key_value_heads=2),
    "MistralConfig": dict(intermediate_size=64, num_key_value_heads=2),
    "Qwen2Config": dict(intermediate_size=64, num_key_value_heads=2),
    "Qwen3Config": dict(intermediate_size=64, num_key_value_heads=2, head_dim=8),
    "GemmaConfig": dict(intermediate_size=64, num_key_value_heads=2, head_dim=8),
    "Gemma2Config": dict(intermediate_size=64, num_key_value_heads=2, head_dim=8),
    "Phi3Config": dict(intermediate_size=64, num_key_value_heads=4, pad_token_id=0),
    "GPT2Config": dict(n_embd=32, n_layer=2, n_head=4),
    "GPTNeoXConfig": dict(intermediate_size=64),
    "FalconConfig": dict(new_decoder_architecture=False),
    "BloomConfig": dict(n_layer=2, n_head=4),
    "OPTConfig": dict(ffn_dim=64, word_embed_proj_dim=32),
    "MixtralConfig": dict(intermediate_size=64, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "Qwen3MoeConfig": dict(intermediate_size=64, num_key_value_heads=2, head_dim=8, num_experts=4,
                           num_experts_per_tok=2, moe_intermediate_size=32),
}


def tiny_model(config_name: str):
    import torch
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**{**SMALL, **FAMILIES[config_name]})
    return transformers.AutoModelForCausalLM.from_config(config)


def peft_trainable(model, resolution: targets.Resolution, r: int) -> int:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, target_modules=resolution.target_modules, task_type="CAUSAL_LM",
                        target_parameters=resolution.target_parameters or None)
    return get_peft_model(model, config).get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("config_name", sorted(FAMILIES))
@pytest.mark.parametrize("preset", ["all_linear", "attention", "minimal", "mlp"])
def test_preset_resolves_and_counts_match_peft(config_name: str, preset: str) -> None:
    model = tiny_model(config_name)
    roles = target_presets()[preset]
    resolution = targets.resolve(roles, model.config.model_type, preset)
    targets.validate_against_model(resolution, model)  # raises if a name matches nothing
    assert resolution.adapted_layers >= 2  # at least one module per layer
    planned, adapted = estimate.lora_parameter_count(targets.linear_shapes(model), resolution.target_modules, r=4)
    planned += estimate.expert_lora_count(model, resolution.target_parameters, r=4)
    assert adapted <= resolution.adapted_layers
    assert planned == peft_trainable(model, resolution, r=4)


@pytest.mark.parametrize("config_name", ["MixtralConfig", "Qwen3MoeConfig"])
def test_moe_experts_go_through_target_parameters(config_name: str) -> None:
    model = tiny_model(config_name)
    resolution = targets.validate_against_model(targets.resolve(target_presets()["all_linear"],
                                                                model.config.model_type), model)
    assert resolution.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]  # never the router `mlp.gate`
    assert resolution.target_parameters == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
    partial = targets.resolve(["q", "gate"], model.config.model_type)
    assert partial.notes == ["'mlp.experts.gate_up_proj' is one fused layer for gate+up: adapting gate also adapts up"]


@pytest.mark.parametrize("config_name", ["GPT2Config", "Phi3Config", "MixtralConfig", "FalconConfig"])
def test_plan_from_a_local_config_matches_peft(config_name: str, tmp_path) -> None:
    """The whole plan path (config.json -> meta-device skeleton -> counts) against PEFT on the real model."""
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.plan.table import plan

    model = tiny_model(config_name)
    model.config.save_pretrained(tmp_path)
    result = plan(to_runconfig(compose(f"model.name={tmp_path}", "lora.r=4")), target_presets(), "all_linear")
    for name, preset in result["presets"].items():
        resolution = targets.validate_against_model(
            targets.resolve(target_presets()[name], model.config.model_type, name), tiny_model(config_name))
        assert preset["trainable_params"] == peft_trainable(tiny_model(config_name), resolution, r=4), name


def test_modules_to_save_counts_tied_weights_like_peft() -> None:
    import transformers
    from conftest import compose
    from peft import LoraConfig, get_peft_model

    from pipeline.config import to_runconfig

    config = transformers.LlamaConfig(**{**SMALL, **FAMILIES["LlamaConfig"]}, tie_word_embeddings=True)
    run = to_runconfig(compose("lora.r=4", "lora.modules_to_save=[lm_head]"))
    meta = transformers.AutoModelForCausalLM.from_config(config)
    planned = estimate.estimate(meta, run, ["q_proj", "v_proj"]).trainable_params
    real = get_peft_model(transformers.AutoModelForCausalLM.from_config(config),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]))
    assert planned == real.get_nb_trainable_parameters()[0]


def test_gpt2_attention_preset_leaves_the_mlp_projection_alone() -> None:
    model = tiny_model("GPT2Config")
    resolution = targets.validate_against_model(targets.resolve(["q", "k", "v", "o"], "gpt2"), model)
    assert resolution.target_modules == ["c_attn", "attn.c_proj"]
    assert resolution.adapted_layers == 4  # c_attn and attn.c_proj in 2 layers, not mlp.c_proj


def test_plan_counts_for_llama_3_1_8b() -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.plan.table import plan

    result = plan(to_runconfig(compose("model=llama3_1_8b", "lora.r=16")), target_presets(), "all_linear")
    assert result["presets"]["all_linear"]["trainable_params"] == 41_943_040
    assert result["presets"]["minimal"]["trainable_params"] == 6_815_744
    assert result["presets"]["attention"]["trainable_params"] == 13_631_488
    assert result["selected"] == "all_linear"
    parts = result["presets"]["all_linear"]["vram_parts"]
    assert set(parts) == {"base_weights", "lora_weights", "lora_gradients", "optimizer_states", "activations",
                          "logits"}
    # NF4 + double quant: ~4.13 bits per quantized weight; embeddings and lm_head stay 16-bit
    assert 5.0 < parts["base_weights"] < 5.6


# model preset -> (trainable parameters at r=16 on all seven projections, the model's own parameters), as fine-tuning
# reports print them from PEFT for the real checkpoints; None where no report was found. The MoE's count has no
# report: it is L·r·(Σ attention (in+out) + experts · Σ expert (in+out)).
PUBLISHED_R16 = {
    "gemma2_2b": (20_766_720, None),
    "gemma2_9b": (54_018_048, 9_241_705_984),
    "llama3_2_3b": (24_313_856, None),
    "llama3_3_70b": (207_093_760, 70_553_706_496),
    "mistral_nemo_12b": (57_016_320, None),
    "qwen2_5_14b": (68_812_800, 14_770_033_664),
    "qwen3_14b": (64_225_280, 14_768_307_200),
    "qwen3_30b_a3b": (642_514_944, 30_532_122_624),
    "qwen3_8b": (43_646_976, 8_190_735_360),
}


@pytest.fixture(scope="module")
def presets() -> dict[str, list[str]]:
    return target_presets()


@pytest.mark.parametrize("model", sorted(PUBLISHED_R16))
def test_model_preset_counts_equal_published_and_peft(model: str, presets: dict[str, list[str]]) -> None:
    """A preset's architecture numbers rebuild the real checkpoint: plan's all-linear count and the model's size are
    the published ones, and on the same architecture cut to 2 layers (PEFT is slow on 80) plan's count for every
    target preset equals PEFT's on the meta-device skeleton."""
    import dataclasses

    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.plan.table import plan

    run = to_runconfig(compose(f"model={model}", "lora.r=16"))
    trainable, size = PUBLISHED_R16[model]
    full = plan(run, presets, "all_linear")["presets"]["all_linear"]
    assert full["trainable_params"] == trainable
    assert size is None or full["total_params"] - trainable == size
    arch = {**run.model.architecture, "num_hidden_layers": 2}
    short = dataclasses.replace(run, model=dataclasses.replace(run.model, architecture=arch))
    for name, preset in plan(short, presets, "all_linear")["presets"].items():
        skeleton = build_meta_model(short.model)
        resolution = targets.validate_against_model(
            targets.resolve(presets[name], skeleton.config.model_type, name), skeleton)
        assert preset["trainable_params"] == peft_trainable(skeleton, resolution, r=16), name


def test_plan_matches_the_real_tiny_model() -> None:
    from conftest import compose
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.config import to_runconfig
    from pipeline.plan.table import plan

    run = to_runconfig(compose("model=tiny"))
    result = plan(run, target_presets(), "all_linear")
    for name, preset in result["presets"].items():
        model = AutoModelForCausalLM.from_pretrained(run.model.name)
        peft_model = get_peft_model(model, LoraConfig(r=run.lora.r, target_modules=preset["target_modules"]))  # dense
        assert (preset["trainable_params"], preset["total_params"]) == peft_model.get_nb_trainable_parameters(), name


def test_vram_estimate_responds_to_the_settings() -> None:
    from conftest import compose

    from pipeline.config import to_runconfig

    def vram(*overrides: str) -> float:
        run = to_runconfig(compose("model=llama3_1_8b", *overrides))
        model = build_meta_model(run.model)
        names = targets.resolve(run.lora.target_modules, "llama").target_modules
        return estimate.estimate(model, run, names).vram_gib

    qlora = vram()
    assert vram("quantization=none") > qlora + 9  # 16-bit base: ~15 GiB vs ~5.3 GiB
    assert vram("trainer.gradient_checkpointing=false") > qlora + 5
    assert vram("trainer.optim=adamw_torch") > qlora
    assert vram("trainer.gradient_checkpointing=false", "lora/target_modules=minimal") < \
        vram("trainer.gradient_checkpointing=false")


def test_a_preset_missing_from_a_model_is_refused_with_the_real_names() -> None:
    from pipeline.errors import ConfigError

    model = tiny_model("LlamaConfig")
    with pytest.raises(ConfigError) as info:
        targets.validate_against_model(targets.resolve(["q_proj", "foo_proj"], "llama"), model)
    assert "foo_proj" in str(info.value) and "q_proj" in str(info.value) and "down_proj" in str(info.value)


