"""`python -m pipeline.export`: a merged 16-bit model that checks itself before it is written, the adapter, GGUF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_merged_export_checks_itself_and_loads_with_plain_transformers(finished_run: Path, tmp_path: Path,
                                                                      home: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = copy_of(finished_run, tmp_path)
    result = run_cli("pipeline.export", f"run={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "check: the run's base and adapter reproduce its recorded losses" in result.stdout
    out = run_dir / "export" / "merged_16bit"
    figures = json.loads((out / "export.json").read_text())
    assert figures["reproduced_gap"] <= figures["reproduced_tolerance"]
    assert figures["logits_max_abs_diff"] <= figures["logits_tolerance"]
    assert figures["layers_changed_by_merge"] == figures["adapted_layers"] == 14  # 7 projections x 2 layers
    assert figures["token_loss_gap"] <= figures["token_loss_tolerance"]
    assert not list(run_dir.glob("export/*.tmp"))

    # a standard HF directory: plain transformers loads it, in 16 bits, with the run's chat template
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(run_dir / "adapter").chat_template
    assert not any("lora" in name for name, _ in merged.named_parameters())
    # and it is the trained model: base + adapter give its logits (to bf16 precision), the base alone does not
    base = AutoModelForCausalLM.from_pretrained(json.loads((run_dir / "summary.json").read_text())["model"],
                                                dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    batch = tokenizer(["What colour is the sky?"], return_tensors="pt")
    with torch.no_grad():
        expected, got = with_adapter(**batch).logits, merged(**batch).logits
        with with_adapter.disable_adapter():
            untouched = with_adapter(**batch).logits
    assert (got - expected).abs().max() < 0.015 * expected.abs().max()
    assert (untouched - expected).abs().max() > 10 * (got - expected).abs().max()


def test_a_changed_adapter_is_refused_and_no_export_is_left(finished_run: Path, tmp_path: Path, home: Path) -> None:
    from safetensors.torch import load_file, save_file

    run_dir = copy_of(finished_run, tmp_path)
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 2 if "lora_B" in k else v for k, v in tensors.items()}, weights)  # damaged after training
    result = run_cli("pipeline.export", f"run={run_dir}", home=home)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: run: the base with this adapter, loaded as the run trained it, does not give "
                               "the losses the run recorded")
    assert not (run_dir / "export").exists()


def test_adapter_export_is_the_adapter_with_its_tokenizer(finished_run: Path, tmp_path: Path, home: Path) -> None:
    run_dir = copy_of(finished_run, tmp_path)
    result = run_cli("pipeline.export", f"run={run_dir}", "export.format=adapter", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "export" / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "export.json"):
        assert (out / name).is_file(), name
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()


def test_gguf_without_llama_cpp_is_one_line_naming_what_to_install(finished_run: Path, tmp_path: Path,
                                                                   home: Path) -> None:
    run_dir = copy_of(finished_run, tmp_path)
    result = run_cli("pipeline.export", f"run={run_dir}", "export.format=gguf", home=home, LLAMA_CPP_DIR=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: export.format: gguf needs llama.cpp's convert_hf_to_gguf.py and the gguf package. Git clone "
        "https://github.com/ggml-org/llama.cpp, set LLAMA_CPP_DIR to it and pip install gguf (or "
        "export.format=merged_16bit and convert it yourself).")
    assert not (run_dir / "export").exists()
