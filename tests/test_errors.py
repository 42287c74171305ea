"""The error contract: one line `error: <dotted.key>: <problem>. <fix>`, exit code 2, no traceback, no run dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from pipeline.errors import ConfigError, did_you_mean, translate_compose_error

CASES = [
    ("lora.rank=8", "error: lora.rank: unknown key. Did you mean 'lora.r'?"),
    ("lora.r=0", "error: lora.r: 0 is out of range"),
    ("lora.dropout=1.5", "error: lora.dropout: 1.5 is out of range"),
    ("quantization=nf5", "error: quantization: unknown option 'nf5'. Did you mean 'nf4'?"),
    ("lora.r=sixteen", "error: lora.r: 'sixteen' is not an integer"),
    ("trainer.lr=1e-4", "error: trainer.lr: unknown key. Did you mean 'trainer.learning_rate'?"),
    ("lora/target_modules=attn", "error: lora/target_modules: unknown option 'attn'"),
    ("backend=vllm", "error: backend: 'vllm' is not allowed"),
    ("trainer.learning_rate=2", "error: trainer.learning_rate: 2.0 is out of range"),
    ("+lora.rank=8", "error: lora.rank: unknown key. Did you mean 'lora.r'?"),  # `+` skips Hydra's struct check
    ("+trainer.foo=1", "error: trainer.foo: unknown key"),
    ("lr=1e-4", "error: lr: unknown key. Did you mean 'trainer.learning_rate'?"),
    ("model.name=null", "error: model.name: cannot be null"),
    ("lora.target_modules=q", "error: lora.target_modules: expects a list"),
    ("logger.mode=online", "error: logger.mode: online needs W&B credentials"),
    ("data.source=no-such-org/no-such-dataset", "error: data.source: cannot load hub dataset"),
    ("model.name=no-such-org/no-such-model", "error: model.name: cannot load 'no-such-org/no-such-model'"),
    ("data.columns=5", "error: data.columns: 5 is not a mapping of column names"),
    ("data.source=missing/file.jsonl", "error: data.source: file not found: missing/file.jsonl"),
    ("name=/../../x", "error: name: /../../x is out of range: must be letters, digits"),  # never outside outputs/
    ("lora.r=33", "error: lora.r: 33 is larger than the narrowest adapted layer (32 wide)"),  # tiny k_proj: 32
    ("trainer.gradient_accumulation_steps=20", "error: trainer.gradient_accumulation_steps: an effective batch of "
     "4 x 20 is larger than the 64 training samples"),
]


@pytest.mark.parametrize("override,expected", CASES)
def test_bad_config_is_one_line_and_exit_2(override: str, expected: str, tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", override, f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()  # nothing half-written


def test_malformed_jsonl_names_file_and_line(tmp_path: Path, home: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [oops\n')
    result = run_cli("pipeline.train", "experiment=quickstart", f"data.source={bad}",
                     f"hydra.run.dir={tmp_path / 'run'}", home=home)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: data.source: {bad}:2: not valid JSON")
    assert not (tmp_path / "run").exists()


def test_missing_target_module_names_the_real_layers(tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", "lora.target_modules=[q_proj,foo_proj]",
                     f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert "'foo_proj' matches no linear layer" in error[0]
    for real in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert real in error[0]
    assert not run_dir.exists()


def test_error_line_format() -> None:
    assert ConfigError("a.b", "is wrong.", "fix it").line() == "error: a.b: is wrong. Fix it."
    assert ConfigError("a.b", "is wrong", "did you mean 'c'?").line() == "error: a.b: is wrong. Did you mean 'c'?"


def test_did_you_mean_uses_synonyms_then_spelling_then_lists() -> None:
    assert did_you_mean("rank", ["r", "alpha"], {"rank": "r"}) == "did you mean 'r'?"
    assert did_you_mean("alpah", ["r", "alpha"]) == "did you mean 'alpha'?"
    assert did_you_mean("zzz", ["r", "alpha"]) == "choose one of: alpha, r"


def test_unknown_hydra_errors_are_left_to_hydra() -> None:
    assert translate_compose_error(RuntimeError("something else")) is None


def test_an_unreachable_hub_is_probed_once_then_offline(tmp_path: Path, home: Path) -> None:
    """Without HF_HUB_OFFLINE, huggingface_hub would retry for most of a minute and print ~20 lines first."""
    import subprocess
    import sys

    from conftest import REPO, offline_env

    env = {k: v for k, v in offline_env(home).items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                                   "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "https://hub.invalid"  # a name that never resolves, whatever this machine's network
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "pipeline.train", "experiment=quickstart",
                             "model.name=no-such-org/no-such-model", f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.name: cannot load 'no-such-org/no-such-model'")
    assert "the hub (hub.invalid) cannot be reached" in result.stdout
    assert not run_dir.exists()
