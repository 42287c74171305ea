"""Every setting reaches the library unchanged: non-default values in, the library's own objects checked out.

These pin behaviour, not outcomes: a setting dropped or swapped on its way (alpha replaced by r, accumulation not
passed) changes no loss curve that a short run could tell apart, but fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose

from pipeline.config import to_runconfig
from pipeline.model import targets
from pipeline.train.precision import Accelerator, resolve_precision

CPU = Accelerator("cpu", "cpu", None, False)
TRAINER = {"learning_rate": 3e-4, "num_train_epochs": 2.5, "max_steps": 7, "per_device_train_batch_size": 3,
           "per_device_eval_batch_size": 5, "gradient_accumulation_steps": 6, "warmup_steps": 0.2,
           "lr_scheduler_type": "cosine", "weight_decay": 0.02, "optim": "adafactor", "max_grad_norm": 0.7,
           "logging_steps": 4, "eval_steps": 9, "save_steps": 11, "save_total_limit": 3}


def test_trainer_settings_reach_sft_config(tmp_path: Path) -> None:
    from pipeline.data.formats import Datasets
    from pipeline.train import trainer

    run = to_runconfig(compose("experiment=quickstart", "seed=11", "data.max_length=200", "data.packing=true",
                               *(f"trainer.{k}={v}" for k, v in TRAINER.items())))
    datasets = Datasets(train=[], eval=[], format="messages", assistant_only_loss=True, completion_only_loss=False)
    from pipeline.compat import trl_sft_config

    kwargs = trainer.sft_config_kwargs(run, resolve_precision("auto", "hf", CPU), tmp_path, datasets, ["none"], "name")
    # TRL's own config class; packing is read from what we pass, since Unsloth's CPU backend, once imported in this
    # process by another test, patches TrainingArguments.__post_init__ to turn it off (a run notes that)
    config = trl_sft_config()(**kwargs)
    for key, value in TRAINER.items():
        assert getattr(config, key) == value, key
    assert (config.seed, config.data_seed, config.max_length, kwargs["packing"]) == (11, 11, 200, True)
    assert (config.eval_strategy, config.assistant_only_loss, config.output_dir) == ("steps", True, str(tmp_path))


def test_max_length_falls_back_to_the_models_and_cannot_exceed_it(tmp_path: Path) -> None:
    from pipeline.errors import ConfigError

    run = to_runconfig(compose("experiment=quickstart", "model.max_seq_length=128"))
    assert run.data.max_length is None  # the trainer then uses 128 (test above: an explicit one is passed)
    with pytest.raises(ConfigError, match="data.max_length: 129 is above model.max_seq_length"):
        to_runconfig(compose("experiment=quickstart", "model.max_seq_length=128", "data.max_length=129"))


LORA = ["lora.r=8", "lora.alpha=24", "lora.dropout=0.1", "lora.bias=lora_only", "lora.use_rslora=true",
        "lora.init_weights=gaussian", "lora.modules_to_save=[lm_head]"]


def test_lora_settings_reach_peft() -> None:
    from peft import LoraConfig

    from pipeline.model.backends import lora_kwargs

    run = to_runconfig(compose("experiment=quickstart", "backend=hf", *LORA))
    config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs(run.lora, targets.resolve(run.lora.target_modules,
                                                                                        "llama")))
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (8, 24, 0.1, "lora_only")
    assert (config.use_rslora, config.init_lora_weights, config.modules_to_save) == (True, "gaussian", ["lm_head"])
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"}


def test_lora_settings_reach_unsloth() -> None:
    from pipeline.model.backends import unsloth

    run = to_runconfig(compose("experiment=quickstart", "trainer.gradient_checkpointing=false", "seed=5", *LORA))
    kwargs = unsloth.get_peft_model_kwargs(run, targets.resolve(run.lora.target_modules, "llama"))
    assert {k: kwargs[k] for k in ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "init_lora_weights",
                                   "modules_to_save", "random_state", "use_gradient_checkpointing")} == {
        "r": 8, "lora_alpha": 24, "lora_dropout": 0.1, "bias": "lora_only", "use_rslora": True,
        "init_lora_weights": "gaussian", "modules_to_save": ["lm_head"], "random_state": 5,
        "use_gradient_checkpointing": False}


@pytest.mark.parametrize("overrides,quant_type,double_quant,compute", [
    ([], "nf4", True, "float32"),
    (["quantization.quant_type=fp4", "quantization.double_quant=false", "quantization.compute_dtype=bfloat16"],
     "fp4", False, "bfloat16"),
])
def test_quantization_settings_reach_bitsandbytes(overrides: list[str], quant_type: str, double_quant: bool,
                                                  compute: str) -> None:
    import torch

    from pipeline.model.backends import unsloth

    run = to_runconfig(compose("experiment=quickstart", *overrides))
    config = unsloth.from_pretrained_kwargs(run, resolve_precision("auto", "unsloth", CPU))["quantization_config"]
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (
        True, quant_type, double_quant)
    assert config.bnb_4bit_compute_dtype == getattr(torch, compute)


def test_model_settings_reach_unsloth() -> None:
    from pipeline.model.backends import unsloth

    run = to_runconfig(compose("experiment=quickstart", "model.max_seq_length=99", "model.trust_remote_code=true",
                               "model.revision=v2", "quantization=int8"))
    kwargs = unsloth.from_pretrained_kwargs(run, resolve_precision("auto", "unsloth", CPU))
    assert {k: kwargs[k] for k in ("max_seq_length", "trust_remote_code", "revision", "load_in_4bit",
                                   "load_in_8bit", "load_in_16bit", "use_exact_model_name")} == {
        "max_seq_length": 99, "trust_remote_code": True, "revision": "v2", "load_in_4bit": False,
        "load_in_8bit": True, "load_in_16bit": False, "use_exact_model_name": True}
    assert "quantization_config" not in kwargs  # 8-bit goes by load_in_8bit


# --- each preset resolves to the exact module list, per family ------------------------------------------------

PRESETS = {"all_linear": ["q", "k", "v", "o", "gate", "up", "down"], "attention": ["q", "k", "v", "o"],
           "minimal": ["q", "v"], "mlp": ["gate", "up", "down"]}
EXPECTED = {
    "llama": {"all_linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              "attention": ["q_proj", "k_proj", "v_proj", "o_proj"], "minimal": ["q_proj", "v_proj"],
              "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "phi3": {"all_linear": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], "attention": ["qkv_proj", "o_proj"],
             "minimal": ["qkv_proj"], "mlp": ["gate_up_proj", "down_proj"]},
    "gpt2": {"all_linear": ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"], "attention": ["c_attn", "attn.c_proj"],
             "minimal": ["c_attn"], "mlp": ["mlp.c_fc", "mlp.c_proj"]},
    "gpt_neox": {"all_linear": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                 "attention": ["query_key_value", "dense"], "minimal": ["query_key_value"],
                 "mlp": ["dense_h_to_4h", "dense_4h_to_h"]},
    "opt": {"all_linear": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
            "attention": ["q_proj", "k_proj", "v_proj", "out_proj"], "minimal": ["q_proj", "v_proj"],
            "mlp": ["fc1", "fc2"]},
    "mixtral": {"all_linear": ["q_proj", "k_proj", "v_proj", "o_proj"], "attention": ["q_proj", "k_proj", "v_proj",
                                                                                      "o_proj"],
                "minimal": ["q_proj", "v_proj"], "mlp": []},
}


@pytest.mark.parametrize("family,preset", [(f, p) for f in EXPECTED for p in PRESETS])
def test_every_preset_resolves_to_the_exact_modules(family: str, preset: str) -> None:
    resolution = targets.resolve(PRESETS[preset], family, preset)
    assert resolution.target_modules == EXPECTED[family][preset]
    if family == "mixtral" and preset in ("all_linear", "mlp"):  # experts: fused 3-D weights
        assert resolution.target_parameters == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def test_shipped_presets_are_the_roles_above() -> None:
    from conftest import target_presets

    assert target_presets() == PRESETS


# --- exact estimates, from the model's published shape ------------------------------------------------------------

def test_llama_3_1_8b_nf4_base_weights_exactly() -> None:
    """Llama-3.1-8B: 32 layers x (q 4096x4096 + k, v 4096x1024 + o 4096x4096 + 3 x 4096x14336) = 6,979,321,856
    quantized weights at 4 + 0.127 bits (one 8-bit absmax per 64, one fp32 per 256 absmax); embeddings, lm_head
    (2 x 128256 x 4096) and 65 norms of 4096 in 16 bits."""
    from pipeline.model.skeleton import build_meta_model
    from pipeline.plan import estimate

    run = to_runconfig(compose("model=llama3_1_8b"))
    model = build_meta_model(run.model)
    quantized, other = 6_979_321_856, 2 * 128_256 * 4096 + 65 * 4096
    shapes = targets.linear_shapes(model)
    assert estimate.base_weight_bytes(model, shapes, 4, True) == quantized * (0.5 + (1 + 4 / 256) / 64) + other * 2
    assert estimate.base_weight_bytes(model, shapes, 4, False) == quantized * (0.5 + 4 / 64) + other * 2
    parts = estimate.estimate(model, run, targets.resolve(run.lora.target_modules, "llama").target_modules).vram_parts
    assert parts["lora_weights"] * 2**30 == 41_943_040 * 4          # fp32 adapters
    assert parts["optimizer_states"] * 2**30 == 41_943_040 * 2      # 8-bit AdamW: 2 bytes per parameter


def test_targets_follow_the_model_really_loaded() -> None:
    """Unsloth may load a llama-fied copy of a fused Phi-3 preset: the run resolves for the loaded layers, says so."""
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    from pipeline.model.targets import follow_loaded_model

    shape = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    skeleton, loaded = Phi3ForCausalLM(Phi3Config(**shape)), LlamaForCausalLM(LlamaConfig(**shape))
    run = to_runconfig(compose("model=phi3_mini"))
    planned = targets.resolve(run.lora.target_modules, "phi3", "all_linear")
    assert planned.target_modules == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    resolution, notes = follow_loaded_model(run.lora.target_modules, "all_linear", planned, skeleton, loaded)
    assert resolution.target_modules == EXPECTED["llama"]["all_linear"] and resolution.adapted_layers == 7
    assert notes == ["the loaded model's layers differ from the preset's numbers (phi3): targets resolved for the "
                     "model loaded (llama): ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', "
                     "'down_proj']"]
    same, none = follow_loaded_model(run.lora.target_modules, "custom", planned, skeleton, skeleton)
    assert same is planned and none == []
