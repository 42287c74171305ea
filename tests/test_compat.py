"""One test per workaround in pipeline/compat.py: each fails loudly when a pinned library changes what it relies on."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO


def self_attributes(function) -> set[str]:
    """Attributes a method reads from `self`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}


def test_trl_prepare_dataset_is_trls_own_and_reads_only_what_our_view_gives() -> None:
    from trl.trainer import sft_trainer

    from pipeline.compat import trl_prepare_dataset, trl_sft_config

    prepare = trl_prepare_dataset()
    with open(sft_trainer.__file__) as f:
        assert inspect.getsource(prepare) in f.read()  # TRL's file, not a class patched in later
    assert prepare is trl_prepare_dataset()            # executed once
    # pipeline.data.prepare calls it on a view of a trainer that has only these three attributes
    assert self_attributes(prepare) == {"_tokenizer", "chat_template", "completion_only_loss"}
    assert trl_sft_config().__module__.endswith("_pipeline_pristine_sft_config_copy")
    assert "max_seq_length" not in {f for f in trl_sft_config().__dataclass_fields__}  # TRL's, not Unsloth's


def test_trl_still_casts_quantized_adapters_to_bf16() -> None:
    """While TRL does this, `undo_trl_adapter_cast` is needed (pipeline.train.trainer.adapter_dtype)."""
    from pipeline.compat import pristine_trl_module

    source = inspect.getsource(pristine_trl_module("sft_trainer").SFTTrainer.__init__)  # TRL's, not a patched one
    assert "param.data = param.data.to(torch.bfloat16)" in source


def test_undo_trl_adapter_cast_restores_trainable_weights_only() -> None:
    import torch

    from pipeline.compat import undo_trl_adapter_cast

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[0].requires_grad_(False)
    assert undo_trl_adapter_cast(model, torch.float32) == 2  # weight and bias of the trainable layer
    assert [p.dtype for p in model.parameters()] == [torch.bfloat16] * 2 + [torch.float32] * 2


def test_bitsandbytes_still_has_the_cpu_repack_switch() -> None:
    import torch
    from bitsandbytes.nn import Linear4bit

    from pipeline.compat import keep_trainable_4bit_layout

    layer = Linear4bit(64, 64, quant_type="nf4")
    assert hasattr(layer, "support_avx512bf16_for_cpu")  # the switch keep_trainable_4bit_layout turns off
    keep_trainable_4bit_layout(torch.nn.Sequential(layer))
    assert layer.support_avx512bf16_for_cpu is False


def test_hydra_still_reports_through_run_and_report() -> None:
    """Our one-line errors hook into this function; if Hydra stops calling it, they would silently vanish."""
    from hydra._internal import utils as hydra_utils

    assert "run_and_report(" in inspect.getsource(hydra_utils._run_hydra)


def test_wrapped_run_and_report_hands_errors_over_first() -> None:
    import pytest
    from hydra._internal import utils as hydra_utils

    from pipeline.compat import wrap_hydra_error_reporting

    before, seen = hydra_utils.run_and_report, []
    try:
        wrap_hydra_error_reporting(lambda ex: (seen.append(ex), exit(2)))
        with pytest.raises(SystemExit) as info:
            hydra_utils.run_and_report(lambda: 1 / 0)
        assert info.value.code == 2 and isinstance(seen[0], ZeroDivisionError)
        assert hydra_utils.run_and_report(lambda: 5) == 5
    finally:
        hydra_utils.run_and_report = before


def test_trl_ships_the_templates_we_name() -> None:
    from pipeline.compat import trl_template_files
    from pipeline.model.chat_templates import UNSLOTH_TO_TRL

    assert set(UNSLOTH_TO_TRL.values()) <= set(trl_template_files())


def test_a_failed_hydra_job_keeps_its_error_where_we_read_it() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from pipeline.compat import hydra_job_error

    failure = ValueError("boom")
    job = JobReturn(overrides=["a=1"], status=JobStatus.FAILED, _return_value=failure)
    assert hydra_job_error(job) is failure


def test_a_quiet_failed_job_raises_without_hydra_line(capsys: pytest.CaptureFixture) -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from pipeline.compat import quiet_failed_job

    failure = ValueError("boom")
    loud = JobReturn(overrides=["a=1"], status=JobStatus.FAILED, _return_value=failure)
    with pytest.raises(ValueError):
        loud.return_value  # noqa: B018 - the property is what Hydra's sweeper reads
    assert "Error executing job with overrides" in capsys.readouterr().err  # what the workaround is for
    quiet = JobReturn(overrides=["a=1"], status=JobStatus.FAILED, _return_value=failure)
    quiet_failed_job(quiet)
    with pytest.raises(ValueError):
        quiet.return_value  # noqa: B018
    assert capsys.readouterr().err == ""
    done = JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)
    quiet_failed_job(done)
    assert done.return_value == 0.5


def test_llama_cpp_converter_still_picks_the_pre_tokenizer_where_we_hook_it() -> None:
    """`run_gguf_converter` wraps conversion.base.TextModel.get_vocab_base_pre of the converter `make setup`
    fetched; the GGUF export test runs it end to end."""
    import sys

    from pipeline.after.export import FETCHED_LLAMA_CPP
    from pipeline.compat import splits_like_gpt2

    if not (FETCHED_LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        pytest.skip("llama.cpp's converter was not fetched (tools/get_llama_cpp.py)")
    sys.path[:0] = [str(FETCHED_LLAMA_CPP), str(FETCHED_LLAMA_CPP / "gguf-py")]
    try:
        from conversion.base import TextModel

        assert callable(TextModel.get_vocab_base_pre)
    finally:
        del sys.path[:2]
    assert splits_like_gpt2(REPO / "assets" / "tiny-llama" / "tokenizer.json")


def test_only_gpt2_style_splitting_gets_the_gpt2_fallback(tmp_path: Path) -> None:
    import json

    from pipeline.compat import splits_like_gpt2

    spec = json.loads((REPO / "assets" / "tiny-llama" / "tokenizer.json").read_text())
    for change in ({"normalizer": {"type": "NFC"}}, {"pre_tokenizer": {"type": "Metaspace"}},
                   {"pre_tokenizer": {**spec["pre_tokenizer"], "add_prefix_space": True}}):
        (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, **change}))
        assert not splits_like_gpt2(tmp_path / "tokenizer.json"), change
    assert not splits_like_gpt2(tmp_path / "missing.json")


def test_a_hidden_library_looks_absent_to_find_spec_and_import() -> None:
    import importlib.util

    from pipeline.compat import hide_from_imports

    assert importlib.util.find_spec("json") is not None
    try:
        assert hide_from_imports(["pipeline_test_absent", "sys"]) == ["pipeline_test_absent"]  # sys is loaded
        assert importlib.util.find_spec("pipeline_test_absent") is None  # what transformers' and PEFT's checks ask
        with pytest.raises(ImportError):
            import pipeline_test_absent  # noqa: F401
    finally:
        del sys.modules["pipeline_test_absent"]


def test_only_a_single_job_without_a_logger_hides_wandb_and_16_bit_hf_hides_bitsandbytes() -> None:
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.train.trainer import unused_libraries

    def unused(*overrides: str, single_job: bool = True) -> list[str]:
        run = to_runconfig(compose("experiment=quickstart", *overrides))
        return unused_libraries(run, single_job)

    assert unused("logger=none", "backend=hf", "quantization=none") == ["wandb", "bitsandbytes"]
    assert unused("logger=none", "backend=hf", "quantization=none", single_job=False) == []  # a sweep's process
    assert unused("logger=wandb", "backend=hf", "quantization=nf4") == []
    assert unused("logger=none", "backend=unsloth", "quantization=none") == ["wandb"]  # Unsloth imports it itself


def test_a_checkpoint_loads_onto_a_numbered_cpu(tmp_path: Path) -> None:
    """transformers resumes a launch's optimizer state with map_location=args.device, `cpu:<rank>` on CPUs, which
    torch cannot place until `load_onto_numbered_cpus` registers it (in a process of its own: it stays registered)."""
    import subprocess

    script = f"""
import torch
from pipeline.compat import load_onto_numbered_cpus
torch.save({{"exp_avg": torch.ones(3)}}, {str(tmp_path / "optimizer.pt")!r})
try:
    torch.load({str(tmp_path / "optimizer.pt")!r}, map_location=torch.device("cpu", 1), weights_only=True)
    print("loaded before")
except RuntimeError as error:
    print("refused before:", "cpu:1" in str(error))
load_onto_numbered_cpus()
state = torch.load({str(tmp_path / "optimizer.pt")!r}, map_location=torch.device("cpu", 1), weights_only=True)
print("after:", state["exp_avg"].device.type, state["exp_avg"].tolist())
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines() == ["refused before: True", "after: cpu [1.0, 1.0, 1.0]"], result.stderr[-2000:]
