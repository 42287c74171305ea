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

    # the export damaged afterwards: generate names it in one line (weights cut short, then deleted)
    weights = next(out.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    result = run_cli("pipeline.generate", f"run={run_dir}", "generate.source=merged_16bit", "prompt=hi", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: generate.source: the merged export in {out} is damaged ("), result.stderr
    weights.unlink()
    result = run_cli("pipeline.generate", f"run={run_dir}", "generate.source=merged_16bit", "prompt=hi", home=home)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: generate.source: the merged export in {out} has no weights (model*.safetensors). Write it again: "
        f"python -m pipeline.export run={run_dir}.")


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


# --- the numerics of the reproduction check (on a GPU, Unsloth's model gives bf16 logits) ---------------------------

@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished continued-pretraining run: its held-out text keeps per-token losses well above zero, where
    rounding the logits to bf16 moves them most."""
    folder = tmp_path_factory.mktemp("text_run")
    (folder / "home").mkdir()
    result = run_cli("pipeline.train", "experiment=quickstart_text", "logger=none", f"hydra.run.dir={folder / 'run'}",
                     home=folder / "home", FT_DATA_CACHE=str(folder / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


def trained_as_recorded(run_dir: Path):
    """The run's base as it trained (hf loader, 4-bit) with its adapter, and its reference samples."""
    from peft import PeftModel

    from pipeline.after import reference
    from pipeline.after.finished import open_finished_run
    from pipeline.model.backends import hf
    from pipeline.train.precision import resolve_precision

    run = open_finished_run(str(run_dir))
    base = hf.load(run.config, resolve_precision(run.config.model.dtype, "hf"))
    return PeftModel.from_pretrained(base, run.adapter).eval(), reference.read(run.adapter)["samples"]


def double_lora_b(model) -> None:  # noqa: ANN001
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data *= 2


def test_reproduction_tolerance_follows_the_logits_dtypes_of_both_sides(text_run: Path) -> None:
    """Recorded under bf16 autocast (bf16 logits, as Unsloth's model gives on a GPU), reproduced in float32 or in
    bf16: within the rounding of the two sides' logits; an adapter with lora_B doubled is refused either way."""
    import torch

    from pipeline.after import reference

    model, samples = trained_as_recorded(text_run)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with bf16:
        recorded = reference.record(model, samples)
    assert recorded["logits_dtype"] == "bfloat16"

    def checked() -> list[tuple[float, float]]:
        mismatched = reference.score(model, samples)
        with bf16:
            both = reference.score(model, samples)
        assert (mismatched.logits_dtype, both.logits_dtype) == ("float32", "bfloat16")
        return [(reference.mean_gap(s.losses, recorded["trained"]), reference.reproduction_tolerance(recorded, s))
                for s in (mismatched, both)]

    (gap, tolerance), (gap_both, tolerance_both) = checked()
    assert reference.REPRODUCE_FLOOR < gap <= tolerance  # a fixed 0.01 would refuse this correct adapter
    assert gap_both <= tolerance_both
    double_lora_b(model)
    for gap, tolerance in checked():
        assert gap > 5 * tolerance


def test_export_verifies_a_run_recorded_in_bf16_and_refuses_it_changed(text_run: Path, tmp_path: Path,
                                                                       home: Path) -> None:
    """The run's record says its logits were bf16 (a GPU run on Unsloth's model); export reproduces it in float32."""
    import torch
    from safetensors.torch import load_file, save_file

    from pipeline.after import reference

    run_dir = copy_of(text_run, tmp_path)
    model, samples = trained_as_recorded(run_dir)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (run_dir / "adapter" / reference.REFERENCE_FILE).write_text(json.dumps(reference.record(model, samples)))
    result = run_cli("pipeline.export", f"run={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((run_dir / "export" / "merged_16bit" / "export.json").read_text())
    assert figures["logits_dtypes_recorded_reproduced"] == ["bfloat16", "float32"]
    assert reference.REPRODUCE_FLOOR < figures["reproduced_gap"] <= figures["reproduced_tolerance"]

    shutil.rmtree(run_dir / "export")
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    save_file({k: v * 2 if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
    result = run_cli("pipeline.export", f"run={run_dir}", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: run: the base with this adapter, loaded as the run trained it, does not "
                                    "give the losses the run recorded")


# --- a pre-quantized model.name (*-bnb-4bit): the merge and the "16-bit" base need its 16-bit original -------------

@pytest.fixture(scope="module")
def prequantized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import prequantized_copy

    folder = tmp_path_factory.mktemp("prequantized")
    (folder / "home").mkdir()
    model = prequantized_copy(folder / "tiny-llama-bnb-4bit")
    result = run_cli("pipeline.train", "experiment=quickstart", "backend=hf", "logger=none", f"model.name={model}",
                     f"hydra.run.dir={folder / 'run'}", home=folder / "home", FT_DATA_CACHE=str(folder / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is pre-quantized and Unsloth's name tables do not know its 16-bit original" in result.stdout
    return folder / "run"


def test_a_prequantized_base_is_merged_into_its_16bit_original(prequantized_run: Path, tmp_path: Path,
                                                                home: Path) -> None:
    from conftest import REPO

    run_dir = copy_of(prequantized_run, tmp_path)
    result = run_cli("pipeline.export", f"run={run_dir}", home=home)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: unquantized_base: model.name ") and \
        "is a pre-quantized 4-bit checkpoint" in result.stderr and "Give it: unquantized_base=" in result.stderr
    assert not (run_dir / "export").exists()
    original = REPO / "assets" / "tiny-llama"
    result = run_cli("pipeline.export", f"run={run_dir}", f"unquantized_base={original}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((run_dir / "export" / "merged_16bit" / "export.json").read_text())
    assert figures["merged_into"] == str(original)
    assert figures["token_loss_gap"] <= figures["token_loss_tolerance"]


def test_generate_on_the_16bit_base_of_a_prequantized_model_loads_16_bits(prequantized_run: Path) -> None:
    from conftest import REPO

    from pipeline.after.finished import open_finished_run
    from pipeline.after.generate import load_base
    from pipeline.errors import ConfigError
    from pipeline.train.precision import resolve_precision

    cpu = resolve_precision("auto", "hf")
    with pytest.raises(ConfigError, match="^error: unquantized_base: model.name .* is a pre-quantized 4-bit"):
        load_base(open_finished_run(str(prequantized_run)), "16bit", cpu)
    base = load_base(open_finished_run(str(prequantized_run), str(REPO / "assets" / "tiny-llama")), "16bit", cpu)
    assert not [m for m in base.modules() if type(m).__name__ == "Linear4bit"]
    assert [m for m in load_base(open_finished_run(str(prequantized_run)), "as_trained", cpu).modules()
            if type(m).__name__ == "Linear4bit"]


@pytest.mark.parametrize("name,given,expected", [
    ("unsloth/Meta-Llama-3.1-8B-bnb-4bit", None, "unsloth/Meta-Llama-3.1-8B"),  # Unsloth's name tables
    ("unsloth/mistral-7b-bnb-4bit", None, "unsloth/mistral-7b"),
    ("unsloth/Meta-Llama-3.1-8B-unsloth-bnb-4bit", None, "unsloth/Meta-Llama-3.1-8B"),  # its dynamic 4-bit repos
    ("someone/my-model-bnb-4bit", "someone/my-model", "someone/my-model"),
    ("someone/my-model-bnb-4bit", None, "error: unquantized_base: model.name someone/my-model-bnb-4bit is a "),
    ("assets/tiny-llama", None, "assets/tiny-llama"),  # a 16-bit model.name is its own base
    ("assets/tiny-llama", "other/model", "error: unquantized_base: model.name assets/tiny-llama is not pre-"),
])
def test_the_16bit_base_of_a_model_name(name: str, given: str | None, expected: str) -> None:
    from conftest import compose

    from pipeline.after.finished import FinishedRun
    from pipeline.config import to_runconfig
    from pipeline.errors import ConfigError

    run = FinishedRun(Path("."), to_runconfig(compose("experiment=quickstart", f"model.name={name}")), {}, given)
    if expected.startswith("error:"):
        with pytest.raises(ConfigError) as refused:
            run.base_16bit()
        assert refused.value.line().startswith(expected)
    else:
        assert run.base_16bit() == (expected, None)


# --- rows the checkpoint never trained: the adapter carries them into the merge and the GGUF ---------------------

def test_trained_token_rows_reach_the_merged_model_and_the_gguf(tmp_path: Path, home: Path) -> None:
    import numpy as np
    from conftest import TEMPLATE_TOKENS, zeroed_copy
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    model = zeroed_copy(tmp_path / "tiny-llama-base")
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "backend=hf", "logger=none", f"model.name={model}",
                     f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"untrained tokens : {', '.join(TEMPLATE_TOKENS)}: rows all zero in the checkpoint" in result.stdout
    rows = {k.split(".token_adapter")[0].rsplit(".", 1)[1]: v.float().numpy() for k, v in
            load_file(run_dir / "adapter" / "adapter_model.safetensors").items() if "trainable_tokens" in k}
    assert sorted(rows) == ["embed_tokens", "lm_head"]

    result = run_cli("pipeline.export", f"run={run_dir}", "export.format=gguf", "export.quantization=f16", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    out = run_dir / "export" / "gguf"
    figures = json.loads((out / "export.json").read_text())
    assert figures["layers_changed_by_merge"] == figures["adapted_layers"] == 16  # 14 LoRA layers + 2 token rows
    reader = GGUFReader(out / figures["gguf"])
    for tensor_name, trained in (("token_embd.weight", rows["embed_tokens"]), ("output.weight", rows["lm_head"])):
        tensor = next(t for t in reader.tensors if t.name == tensor_name)
        got = dequantize(tensor.data, tensor.tensor_type).reshape(505, -1)[[1, 2]]
        assert np.abs(got - trained).max() < np.abs(trained).max() / 128  # bf16 merge, then f16: the adapter's rows
        assert np.abs(got).min(axis=1).max() > 0  # no longer the checkpoint's zeros


# --- the template served is the one trained ------------------------------------------------------------------------

def test_every_export_and_generate_render_the_held_out_conversation_as_training_did(finished_run: Path,
                                                                                    tmp_path: Path,
                                                                                    home: Path) -> None:
    from transformers import AutoTokenizer

    from pipeline.after import generate, reference
    from pipeline.after.finished import open_finished_run
    from pipeline.config.schema import GenerateConfig
    from pipeline.data.turns import render

    run_dir = copy_of(finished_run, tmp_path)
    record = reference.read(run_dir / "adapter")
    assert record["rendered"].startswith("<|im_start|>") and record["conversation"]["messages"][-1]["role"] == \
        "assistant"
    for fmt in ("adapter", "gguf"):  # gguf: the merged model's tokenizer, then the GGUF's embedded template
        result = run_cli("pipeline.export", f"run={run_dir}", f"export.format={fmt}", home=home)
        assert result.returncode == 0, result.stderr[-3000:]
        figures = json.loads((run_dir / "export" / fmt / "export.json").read_text())
        assert figures["template_renders_as_trained"] is True
    assert figures["gguf_chat_template_is_the_runs"] is True and figures["stops"] == ["<|im_end|>"]
    _, tokenizer = generate.load(open_finished_run(str(run_dir)), GenerateConfig())
    conversation = record["conversation"]
    assert render(tokenizer, conversation["messages"], conversation["tools"]) == record["rendered"]
    assert render(AutoTokenizer.from_pretrained(run_dir / "export" / "gguf"), conversation["messages"],
                  conversation["tools"]) == record["rendered"]


def test_an_export_whose_template_differs_from_trainings_is_refused(finished_run: Path, tmp_path: Path,
                                                                    home: Path) -> None:
    run_dir = copy_of(finished_run, tmp_path)
    template = run_dir / "adapter" / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>assistant\\n", "<|im_start|>model\\n"))
    for fmt in ("merged_16bit", "adapter"):
        result = run_cli("pipeline.export", f"run={run_dir}", f"export.format={fmt}", home=home)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: run: the exported tokenizer's chat template renders the run's "
                                        "held-out conversation otherwise than training did")
        assert not (run_dir / "export").exists()


@pytest.mark.e2e
def test_the_modelfile_stops_at_the_templates_end_of_turn(tmp_path: Path, home: Path) -> None:
    """Llama 3.1's template ends an answer with <|eot_id|>, not with the tokenizer's end of text: Ollama must stop
    at both."""
    from conftest import REPO

    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", "model.chat_template=llama-3.1",
                     f"data.source={REPO / 'assets' / 'data' / 'tiny_multiturn.jsonl'}", "model.max_seq_length=512",
                     "trainer.max_steps=2", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("pipeline.export", f"run={run_dir}", "export.format=gguf", "export.quantization=f16", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((run_dir / "export" / "gguf" / "export.json").read_text())
    assert figures["template_renders_as_trained"] is True and figures["stops"] == ["<|eot_id|>", "<|im_end|>"]
    assert (run_dir / "export" / "gguf" / "Modelfile").read_text().endswith(
        'PARAMETER stop "<|eot_id|>"\nPARAMETER stop "<|im_end|>"\n')
