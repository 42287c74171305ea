"""What Unsloth's GPU path changes, checked on CPU: TRL's classes it replaces, the signatures we call, precision
choices on simulated GPUs, and the dtype adapters train in. See docs/gpu.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.train.precision import Accelerator, resolve_precision

T4 = Accelerator("cuda", "Tesla T4", (7, 5), native_bf16=False)
H100 = Accelerator("cuda", "NVIDIA H100 80GB HBM3", (9, 0), native_bf16=True)


# --- precision on simulated devices -------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend,asked,dtype,autocast,noted", [
    (T4, "hf", "auto", "float16", "fp16", False),
    (T4, "unsloth", "auto", "float16", "fp16", False),
    (T4, "hf", "bfloat16", "float16", "fp16", True),        # emulated bf16 is very slow: fp16, said once
    (T4, "unsloth", "bfloat16", "float16", "fp16", True),   # Unsloth would load fp16, then SFTConfig(bf16) raises
    (T4, "hf", "float32", "float32", "none", False),
    (T4, "unsloth", "float32", "float32", "none", False),   # no native bf16: Unsloth keeps a float32 model
    (H100, "hf", "auto", "bfloat16", "bf16", False),
    (H100, "unsloth", "auto", "bfloat16", "bf16", False),
    (H100, "unsloth", "float16", "float16", "fp16", False),
    (H100, "hf", "float32", "float32", "none", False),
    (H100, "unsloth", "float32", "bfloat16", "bf16", True),  # Unsloth's trainer autocasts a float32 model to bf16
])
def test_precision_on_simulated_gpus(device: Accelerator, backend: str, asked: str, dtype: str, autocast: str,
                                     noted: bool) -> None:
    precision = resolve_precision(asked, backend, device)
    assert (precision.device, precision.name, precision.autocast) == ("cuda", dtype, autocast)
    assert bool(precision.notes) == noted
    if noted:
        assert precision.notes[0].startswith(f"model.dtype={asked}: ")


def test_bf16_support_means_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch counts emulated bf16 as supported unless asked not to: a T4 must come out fp16."""
    import torch

    from pipeline.train.precision import detect_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert detect_accelerator() == T4
    assert resolve_precision("auto", "hf").name == "float16"


def test_cpu_precision_is_float32_without_autocast() -> None:
    precision = resolve_precision("auto", "unsloth", Accelerator("cpu", "cpu", None, False))
    assert (precision.device, precision.name, precision.autocast, precision.notes) == ("cpu", "float32", "none", ())


# --- adapter dtypes ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized_hf_model():
    """The tiny model in 4-bit NF4 through the hf backend, with LoRA on all seven projections."""
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.model import targets
    from pipeline.model.backends import hf
    from pipeline.model.loading import load_tokenizer

    run = to_runconfig(compose("experiment=quickstart", "backend=hf"))
    cpu = resolve_precision("auto", "hf", Accelerator("cpu", "cpu", None, False))
    model = hf.load(run, cpu)
    tokenizer = load_tokenizer(run)
    model = hf.apply_lora(model, run, targets.resolve(run.lora.target_modules, "llama"))
    return run, model, tokenizer, cpu


@pytest.mark.parametrize("device", [T4, H100], ids=["fp16", "bf16"])
def test_hf_adapters_of_a_quantized_model_train_in_fp32(device: Accelerator, quantized_hf_model, tmp_path) -> None:
    """TRL casts them to bf16: fp16 AMP's GradScaler cannot unscale bf16 gradients, bf16 updates round away."""
    import torch

    from pipeline.data import formats as data_lib
    from pipeline.train import trainer as training

    run, model, tokenizer, cpu = quantized_hf_model
    precision = resolve_precision("auto", "hf", device)
    built = data_lib.build(run.data, tokenizer, run.seed)
    # the SFTConfig of this machine (CPU: no autocast); the precision object is the simulated GPU's
    sft_config = training.build_sft_config(training.sft_config_kwargs(run, cpu, tmp_path, built, ["none"], "t"))
    trainer = training.build_trainer(model, tokenizer, built, sft_config, [], precision, "hf")
    assert training.trainable_dtypes(trainer.model) == ["float32"]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)


def test_plan_prices_what_each_backend_keeps() -> None:
    """PEFT's k-bit preparation (hf) keeps embeddings, lm_head and norms in fp32; Unsloth keeps them 16-bit."""
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.model import targets
    from pipeline.model.skeleton import build_meta_model
    from pipeline.plan import estimate

    parts = {}
    for backend in ("unsloth", "hf"):
        run = to_runconfig(compose("model=llama3_1_8b", f"backend={backend}"))
        model = build_meta_model(run.model)
        names = targets.resolve(run.lora.target_modules, "llama").target_modules
        parts[backend] = estimate.estimate(model, run, names).vram_parts
    non_quantized = 2 * 128256 * 4096 + 65 * 4096  # embeddings + lm_head + 65 norms of Llama-3.1-8B
    extra = (parts["hf"]["base_weights"] - parts["unsloth"]["base_weights"]) * 2**30
    assert extra == pytest.approx(non_quantized * 2)  # fp32 instead of 16-bit: 2 more bytes each (~2 GiB)
    assert parts["hf"]["lora_weights"] == parts["unsloth"]["lora_weights"] == pytest.approx(41_943_040 * 4 / 2**30)


# --- data preparation under Unsloth's GPU-side SFTTrainer ------------------------------------------------------

FORMATS = ("messages", "alpaca", "sharegpt", "prompt_completion", "text")


@pytest.fixture(scope="module")
def gpu_trainer_classes(tmp_path_factory):
    import unsloth  # noqa: F401 - before trl, as on a GPU
    from unsloth_gpu_trainer import build_gpu_sft_config, build_gpu_sft_trainer

    return build_gpu_sft_trainer(tmp_path_factory.mktemp("unsloth_gpu")), build_gpu_sft_config()


def prepared_rows(fmt: str, cache: Path) -> dict[str, list]:
    from conftest import REPO, compose
    from transformers import AutoTokenizer

    from pipeline.config import to_runconfig
    from pipeline.data import formats as data_lib
    from pipeline.data import prepare

    source = REPO / "assets" / "data" / f"tiny_{fmt}.jsonl"
    run = to_runconfig(compose("experiment=quickstart", f"data.source={source}", "data.format=auto", "data.val_size=0",
                               "data.cache=false"))
    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    prepared = prepare.prepare(data_lib.build(run.data, tokenizer, run.seed), tokenizer, run)
    return prepared.train.to_dict()


@pytest.mark.parametrize("fmt", FORMATS)
def test_preparation_is_trls_under_unsloths_gpu_trainer(fmt: str, gpu_trainer_classes, tmp_path) -> None:
    from unsloth_gpu_trainer import installed_like_unsloth_gpu

    expected = prepared_rows(fmt, tmp_path)
    with installed_like_unsloth_gpu(*gpu_trainer_classes):
        import trl

        assert trl.SFTTrainer is gpu_trainer_classes[0]  # what a GPU run would call
        seen = prepared_rows(fmt, tmp_path)
    assert seen["input_ids"] == expected["input_ids"]  # token for token
    assert seen["labels"] == expected["labels"]        # mask for mask


def test_unsloths_gpu_preparation_really_differs(gpu_trainer_classes) -> None:
    """The reproduction is the real thing: prompt/completion data fails in it, text data loses labels and EOS."""
    from types import SimpleNamespace

    from conftest import REPO
    from datasets import Dataset
    from transformers import AutoTokenizer
    from unsloth_gpu_trainer import installed_like_unsloth_gpu

    tokenizer = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama")
    view = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                "completion": [{"role": "assistant", "content": "yo"}]}])
    text = Dataset.from_list([{"text": "hello there"}])
    trainer_cls, config_cls = gpu_trainer_classes
    with installed_like_unsloth_gpu(trainer_cls, config_cls):
        args = config_cls(output_dir="/tmp/unused", max_length=None, packing=False, shuffle_dataset=False,
                          completion_only_loss=True, bf16=False, fp16=False, report_to="none")
        with pytest.raises(TypeError, match="'>' not supported"):
            trainer_cls._prepare_dataset(view, pairs, tokenizer, args, False, None, "train")
        prepared_text = trainer_cls._prepare_dataset(view, text, tokenizer, args, False, None, "train")
    assert "labels" not in prepared_text.column_names
    assert prepared_text[0]["input_ids"][-1] != tokenizer.eos_token_id


def test_cache_key_names_the_preparer() -> None:
    from pipeline.compat import trl_preparer_name

    assert trl_preparer_name().startswith("trl 1.14.2 SFTTrainer._prepare_dataset")


# --- the keyword arguments we pass, against Unsloth's GPU-path signatures --------------------------------------

def gpu_source(relative: str) -> str:
    """A file of Unsloth's GPU path (importing it needs triton: it is read instead)."""
    import importlib.util

    return (Path(importlib.util.find_spec("unsloth").origin).parent / relative).read_text()


def gpu_signature(relative: str, cls: str, method: str) -> set[str]:
    """Named parameters of a method in Unsloth's GPU-path source."""
    import ast

    tree = ast.parse(gpu_source(relative))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    func = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method)
    return {a.arg for a in func.args.args + func.args.kwonlyargs}


@pytest.mark.parametrize("overrides", [[], ["quantization=int8"], ["quantization=none"],
                                       ["model.revision=abc123", "quantization.quant_type=fp4"]])
def test_our_arguments_fit_unsloths_gpu_signatures(overrides: list[str]) -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.model import targets
    from pipeline.model.backends import unsloth as backend

    run = to_runconfig(compose("experiment=quickstart", *overrides))
    precision = resolve_precision("auto", "unsloth", H100)
    load = backend.from_pretrained_kwargs(run, precision)
    # quantization_config travels in **kwargs, which both loaders read by that name
    assert 'kwargs.get("quantization_config", None)' in gpu_source("models/loader.py")
    for cls in ("FastLanguageModel", "FastModel"):  # FastModel: model types Unsloth has no fast path for
        assert set(load) - {"quantization_config"} <= gpu_signature("models/loader.py", cls, "from_pretrained"), cls
    peft = backend.get_peft_model_kwargs(run, targets.resolve(run.lora.target_modules, "llama"))
    assert set(peft) - {"model"} <= gpu_signature("models/llama.py", "FastLlamaModel", "get_peft_model")
    assert isinstance(peft["target_modules"], list)  # Unsloth iterates a string character by character
    assert load["use_exact_model_name"] == bool(run.model.revision)  # a revision or fp4 loads the repo as named


def test_default_settings_let_unsloth_use_its_prequantized_copy() -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.model.backends import unsloth as backend

    run = to_runconfig(compose("experiment=llama3_1_8b_alpaca"))
    assert backend.exact_name_reasons(run) == []
    run = to_runconfig(compose("experiment=llama3_1_8b_alpaca", "quantization.double_quant=false"))
    assert backend.exact_name_reasons(run) == [
        "quantization.double_quant=False (a pre-quantized copy carries its own settings)"]


# --- LoRA options per backend and device -----------------------------------------------------------------------

@pytest.mark.parametrize("backend,device,quantization,init,refused", [
    ("unsloth", "cuda", "nf4", "corda", True),
    ("unsloth", "cuda", "nf4", "pissa", True),
    ("unsloth", "cuda", "nf4", "olora", False),   # allowed on bitsandbytes
    ("unsloth", "cuda", "none", "pissa", False),
    ("unsloth", "cuda", "none", "corda", True),   # needs a preprocessing pass we do not run
    ("unsloth", "cpu", "nf4", "olora", True),
    ("unsloth", "cpu", "none", "pissa", True),
    ("unsloth", "cpu", "nf4", "gaussian", False),
    ("hf", "cuda", "nf4", "pissa", False),
    ("hf", "cpu", "nf4", "olora", False),
])
def test_init_weights_checked_per_backend_and_device(backend: str, device: str, quantization: str, init: str,
                                                     refused: bool) -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.errors import ConfigError
    from pipeline.model.backends import check_options

    run = to_runconfig(compose("experiment=quickstart", f"backend={backend}", f"quantization={quantization}",
                               f"lora.init_weights={init}"))
    if refused:
        with pytest.raises(ConfigError, match=f"'{init}' is refused by Unsloth"):
            check_options(run, device)
    else:
        check_options(run, device)


@pytest.mark.parametrize("modules,refused", [(["lm_head", "embed_tokens"], False), (["model.norm"], False),
                                             (["q_proj"], True)])
def test_modules_to_save_on_unsloth(modules: list[str], refused: bool) -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.errors import ConfigError

    overrides = ("experiment=quickstart", f"lora.modules_to_save=[{','.join(modules)}]")
    if refused:
        with pytest.raises(ConfigError, match="cannot be trained in full by Unsloth"):
            to_runconfig(compose(*overrides))
    else:
        to_runconfig(compose(*overrides))
    to_runconfig(compose(*overrides, "backend=hf"))  # PEFT trains any module in full


def test_summary_records_the_quantization_loaded_not_the_one_asked(tmp_path: Path) -> None:
    """A pre-quantized checkpoint's own settings win in transformers, and Unsloth's GPU loader then writes the config
    it was given into model.config (unsloth/models/loader.py): the record reads the checkpoint and the layers."""
    import torch
    from conftest import compose, prequantized_copy

    from pipeline.config import to_runconfig
    from pipeline.model.backends import bnb_config, hf
    from pipeline.model.loaded import describe_loaded, quantization_notes

    folder = prequantized_copy(tmp_path / "tiny-llama-bnb-4bit")
    run = to_runconfig(compose("experiment=quickstart", "backend=hf", f"model.name={folder}"))
    model = hf.load(run, resolve_precision("auto", "hf", Accelerator("cpu", "cpu", None, False)))
    asked = bnb_config(run.quantization, torch.float32)  # NF4 + double quant: not what the checkpoint holds
    assert 'model.config.update({"quantization_config": quantization_config.to_dict()})' in gpu_source(
        "models/loader.py")
    model.config.update({"quantization_config": asked.to_dict()})  # what Unsloth's loader then does on a GPU
    loaded = describe_loaded(model)
    layers = loaded["quantization"]
    assert (layers["bits"], layers["quant_type"], layers["double_quant"], layers["compute_dtype"]) == \
        (4, "fp4", False, "float32")
    assert layers["quantized_layers"] == 12  # 6 of the 7 projections x 2 layers: down_proj stayed 16-bit
    assert layers["unquantized_linear"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"]
    assert loaded["checkpoint_quantization_config"]["bnb_4bit_quant_type"] == "fp4"
    assert quantization_notes(run, loaded) == [f"the 4-bit layers loaded hold quant_type=fp4 (asked nf4), "
                                               f"double_quant=False (asked True): {folder}'s own quantization applies"]


def test_a_prequantized_name_refuses_other_quantization() -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.errors import ConfigError
    from pipeline.model.backends import check_options

    run = to_runconfig(compose("experiment=quickstart", "model.name=unsloth/Meta-Llama-3.1-8B-bnb-4bit",
                               "quantization.quant_type=fp4"))
    with pytest.raises(ConfigError, match="is already quantized to 4-bit"):
        check_options(run, "cuda")
