"""Level 2: target resolution, W&B mode choice and naming, secret removal, precision."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.resolved import redact_secrets
from pipeline.errors import ConfigError
from pipeline.model import targets
from pipeline.outputs import tracking

ALL = ["q", "k", "v", "o", "gate", "up", "down"]


def test_llama_roles_resolve_to_projection_names() -> None:
    res = targets.resolve(ALL, "llama", "all_linear")
    assert res.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert res.notes == []


def test_phi3_minimal_targets_the_fused_qkv_and_says_so() -> None:
    res = targets.resolve(["q", "v"], "phi3", "minimal")
    assert res.target_modules == ["qkv_proj"]
    assert res.notes == ["'qkv_proj' is one fused layer for q+k+v: adapting q+v also adapts k"]


def test_fast_path_sees_fused_and_literal_modules() -> None:
    from types import SimpleNamespace

    from pipeline.model.backends.unsloth import fast_path_blockers

    run = SimpleNamespace(lora=SimpleNamespace(dropout=0.0, bias="none"))
    phi3_minimal = targets.covered_roles(targets.resolve(["q", "v"], "phi3"), "phi3")
    assert phi3_minimal == {"q", "k", "v"} and fast_path_blockers(run, phi3_minimal) == []
    literal = targets.covered_roles(targets.resolve(["q_proj", "v_proj"], "llama"), "llama")
    assert fast_path_blockers(run, literal) == ["only q+v of q+k+v adapted (fused kernels need all)"]


def test_gpt2_disambiguates_c_proj_by_parent() -> None:
    assert targets.resolve(ALL, "gpt2").target_modules == ["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def test_literal_names_pass_through() -> None:
    assert targets.resolve(["q_proj", "model.layers.0.mlp.up_proj"], "llama").target_modules == [
        "q_proj", "model.layers.0.mlp.up_proj"]
    with pytest.raises(ConfigError, match="'lm_head' is the output layer"):  # LoRA on it: refused (see targets)
        targets.resolve(["q_proj", "lm_head"], "llama")


def test_roles_for_an_unknown_architecture_are_refused() -> None:
    with pytest.raises(ConfigError, match="no table"):
        targets.resolve(["q"], "some_new_arch")


def test_validation_against_a_real_model_counts_layers() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1))
    res = targets.validate_against_model(targets.resolve(["q", "v"], "llama"), model)
    assert res.adapted_layers == 6
    with pytest.raises(ConfigError, match="'qproj' matches no linear layer.*Closest: 'q_proj'"):
        targets.validate_against_model(targets.resolve(["qproj"], "llama"), model)


def test_wandb_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.choose_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.choose_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.choose_mode("auto") == "disabled"
    assert tracking.choose_mode("offline") == "offline"
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracking.choose_mode("auto") == "online"


def test_online_without_credentials_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from conftest import compose

    from pipeline.config import to_runconfig

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = to_runconfig(compose("logger=wandb", "logger.mode=online"))
    with pytest.raises(ConfigError, match="logger.mode: online needs W&B credentials"):
        tracking.check_credentials(run)
    tracking.check_credentials(to_runconfig(compose("logger=wandb")))  # auto: fine, it falls back to offline


def test_jobs_of_one_sweep_share_a_group() -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.config.context import RunContext

    run = to_runconfig(compose("experiment=quickstart"))
    job1 = RunContext(Path("x"), choices={"lora/target_modules": "attention"}, multirun=True, job_num=1,
                      sweep_dir="outputs/multirun/2026-11-24/05-00-00", preset="attention")
    job0 = RunContext(**{**job1.__dict__, "job_num": 0})
    assert tracking.sweep_group(run, job1) == tracking.sweep_group(run, job0) == "sweep-2026-11-24-05-00-00"
    assert tracking.sweep_group(run, RunContext(Path("x"))) is None
    one_part = RunContext(**{**job1.__dict__, "sweep_dir": "swp"})
    assert tracking.sweep_group(run, one_part) == "sweep-swp"  # a one-part sweep dir works
    job1 = RunContext(**{**job1.__dict__, "overrides": ("lora/target_modules=attention", "lora.r=16")})
    assert tracking.run_name(run, job1) == "quickstart-job1 lora/target_modules=attention lora.r=16"  # its overrides
    assert tracking.run_name(run, RunContext(Path("x"), preset="attention")) == "quickstart-attention-r16"


def test_preset_label_says_custom_for_literal_lists() -> None:
    from conftest import CONF
    from hydra import initialize_config_dir

    from pipeline.config.context import preset_label

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        assert preset_label(["q", "v"], "minimal") == "minimal"
        assert preset_label(["q_proj"], "all_linear") == "custom"
    assert preset_label(["q", "v"], "minimal") == "custom"  # outside Hydra no preset can be confirmed


def test_secrets_are_removed_at_any_depth() -> None:
    clean = redact_secrets({"a": 1, "hf_token": "x", "logger": {"api_key": "y", "tags": ["t"]}, "token": "z",
                            "wandb_api_key": "w", "password": "p"})
    assert clean == {"a": 1, "logger": {"tags": ["t"]}}


def test_settings_named_like_tokens_are_kept() -> None:
    kept = {"pad_token_id": 0, "max_new_tokens": 64, "eos_token": "</s>", "tokenizer": "x", "num_tokens": 3}
    assert redact_secrets(kept) == kept


def test_precision_on_cpu_is_fp32_without_mixed_precision() -> None:
    import torch

    from pipeline.train.precision import Accelerator, resolve_precision

    p = resolve_precision("auto", "hf", Accelerator("cpu", "cpu", None, False))
    assert (p.device, p.dtype, p.bf16, p.fp16) == ("cpu", torch.float32, False, False)


def test_fsdp_settings_reach_transformers_fsdp_plugin_and_bitsandbytes(tmp_path: Path) -> None:
    """FSDP cannot run on CPU (the catalog has the refusal); what it would hand transformers can be checked here."""
    import torch
    from conftest import compose
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    from pipeline.config import to_runconfig
    from pipeline.train.distributed import quant_storage, trainer_kwargs

    run = to_runconfig(compose("experiment=quickstart", "backend=hf", "distributed=fsdp"))
    config = SFTConfig(output_dir=str(tmp_path), report_to=[], bf16=False, **trainer_kwargs(run.distributed, "cuda", 4))
    assert config.fsdp_plugin_args["fsdp_version"] == 2 and config.fsdp_plugin_args["state_dict_type"] == \
        "FULL_STATE_DICT"
    assert config.fsdp_plugin_args["reshard_after_forward"] is run.distributed.reshard_after_forward
    storage = BitsAndBytesConfig(load_in_4bit=True, **quant_storage(run.distributed, torch.bfloat16))
    assert storage.bnb_4bit_quant_storage == torch.bfloat16  # 4-bit weights in a float dtype FSDP can shard
    assert quant_storage(to_runconfig(compose("experiment=quickstart")).distributed, torch.bfloat16) == {}


def test_the_largest_micro_batch_that_fits_follows_from_one_estimate() -> None:
    from pipeline.plan import fit

    # batch 2: 1.5 GiB per sample on top of 5 GiB that does not grow; a T4 leaves 15 - 0.5 (CUDA context) GiB
    gpus = fit.fit({"base_weights": 4.0, "optimizer_states": 1.0, "activations": 2.0, "logits": 1.0}, batch_size=2)
    assert gpus["T4 16GB"] == {"usable_gib": 14.5, "fits": True, "max_batch": 6, "short_gib": None}
    assert fit.cell(gpus["A100/H100 80GB"]) == f"b<={int((81559 / 1024 - 0.5 - 5) // 1.5)}"
    too_big = fit.fit({"base_weights": 20.0, "activations": 4.0, "logits": 0.0}, batch_size=4)["T4 16GB"]
    assert too_big == {"usable_gib": 14.5, "fits": False, "max_batch": None, "short_gib": 6.5}  # 20 + 1 - 14.5
    assert fit.cell(too_big) == "-6.5 GiB"


def test_plan_prices_a_local_dataset_at_its_longest_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.plan.lengths import priced_length

    monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / "cache"))
    length = priced_length(to_runconfig(compose("experiment=quickstart")))
    assert (length.tokens, length.source) == (53, "data")  # tiny_messages.jsonl: 38-53 tokens, limit 256
    assert "the longest training sample of" in length.reason and "(p95 53, limit 256; 72 samples)" in length.reason
    packed = priced_length(to_runconfig(compose("experiment=quickstart", "data.packing=true")))
    assert (packed.tokens, packed.source) == (256, "limit")
    hub = priced_length(to_runconfig(compose("experiment=quickstart", "data.source=someone/some-dataset")))
    assert (hub.tokens, hub.source) == (256, "limit") and "not a local dataset" in hub.reason


def test_summary_keeps_gpu_peaks_allocated_and_reserved_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from pipeline.outputs import report

    cpu = report.training_facts(None, [], 1.0, "cpu")
    assert cpu["peak_memory_mb"] > 0 and "peak_memory_allocated_mb" not in cpu and "peak_memory_reserved_mb" not in cpu
    # no GPU here: the two CUDA counters stand in for a device's
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 4 * 2**30)
    assert report.gpu_peaks_mb("cuda") == {"peak_memory_allocated_mb": 3072.0, "peak_memory_reserved_mb": 4096.0}


def test_the_loss_plot_is_a_well_formed_svg_with_both_curves(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from pipeline.outputs import plot

    assert plot.nice_ticks(0.07, 1.93) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert plot.nice_ticks(0, 60) == [0, 20, 40, 60]
    series = {"loss": [(s, 2.0 / s) for s in range(1, 61)], "eval_loss": [(10, 0.4), (20, 0.2)], "other": []}
    plot.write_loss_svg(tmp_path / "loss.svg", series, "quickstart <tiny>")
    svg = ET.parse(tmp_path / "loss.svg").getroot()
    namespace = "{http://www.w3.org/2000/svg}"
    assert len(svg.findall(f"{namespace}polyline")) == 1 and len(svg.findall(f"{namespace}circle")) == 2
    assert len(svg.find(f"{namespace}polyline").get("points").split()) == 60
    assert "quickstart <tiny>" in [t.text for t in svg.findall(f"{namespace}text")]
    plot.write_loss_svg(tmp_path / "none.svg", {"loss": []}, "no points")
    assert not (tmp_path / "none.svg").exists()


def test_tokenizing_forks_one_process_per_core_only_for_large_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pipeline.data.prepare import processes

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert (processes(None, 9_999), processes(None, 10_000), processes(3, 50), processes(1, 10**6)) == \
        (None, 8, 3, None)  # None: TRL tokenizes in this process
