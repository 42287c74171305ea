"""The commands as users meet them: console scripts, --help, shell completion, and presets kept outside conf/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import offline_env, run_cli

pytestmark = pytest.mark.e2e
SCRIPTS = Path(sys.executable).parent


def test_help_lists_only_what_a_user_can_pick(home: Path) -> None:
    result = run_cli("pipeline.train", "--help", home=home)
    assert result.returncode == 0, result.stderr
    assert "_schema" not in result.stdout
    assert "  experiment: compare_presets, gemma2_9b_chat, llama3_1_8b_alpaca, phi3_mini_alpaca, quickstart, " \
        "quickstart_dpo, quickstart_mix, quickstart_text, quickstart_tools, qwen2_5_7b_chat, qwen3_8b_chat\n" \
        in result.stdout
    assert "  hparams_search: lora_optuna\n" in result.stdout and "  distributed: ddp, fsdp, none\n" in result.stdout
    assert "  lora/target_modules: all_linear, attention, minimal, mlp" in result.stdout
    assert result.stdout.startswith("python -m pipeline.train: ")


def complete(script: str, line: str, home: Path, cwd: Path) -> list[str]:
    result = subprocess.run([str(SCRIPTS / script), "-sc", "query=bash"], cwd=cwd, capture_output=True, text=True,
                            env=offline_env(home, COMP_LINE=line), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_shell_completion_offers_every_group_from_any_directory(home: Path, tmp_path: Path) -> None:
    top = complete("ft-train", "ft-train ", home, tmp_path)
    assert {"experiment=", "model=", "lora", "quantization=", "trainer=", "data=", "logger=", "resume="} <= set(top)
    assert complete("ft-train", "ft-train experiment=", home, tmp_path) == [
        "experiment=compare_presets", "experiment=gemma2_9b_chat", "experiment=llama3_1_8b_alpaca",
        "experiment=phi3_mini_alpaca", "experiment=quickstart", "experiment=quickstart_dpo",
        "experiment=quickstart_mix", "experiment=quickstart_text",
        "experiment=quickstart_tools", "experiment=qwen2_5_7b_chat", "experiment=qwen3_8b_chat"]
    assert complete("ft-plan", "ft-plan lora/", home, tmp_path) == ["lora/target_modules="]


def own_config_dir(tmp_path: Path) -> Path:
    """A user's config directory with a model preset and a target preset that conf/ does not have."""
    folder = tmp_path / "my_conf"
    (folder / "model").mkdir(parents=True)
    (folder / "lora" / "target_modules").mkdir(parents=True)
    (folder / "model" / "my_llama.yaml").write_text("""\
defaults:
  - model_schema

name: my-org/private-llama-8b  # not on any hub this machine reaches
max_seq_length: 2048
architecture:
  model_type: llama
  vocab_size: 128256
  hidden_size: 4096
  intermediate_size: 14336
  num_hidden_layers: 32
  num_attention_heads: 32
  num_key_value_heads: 8
  tie_word_embeddings: false
""")
    (folder / "lora" / "target_modules" / "qko.yaml").write_text("# @package lora\ntarget_modules: [q, k, o]\n")
    return folder


def test_presets_in_a_searchpath_directory_work_like_shipped_ones(tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "plan"
    result = run_cli("pipeline.plan", f"hydra.searchpath=[file://{own_config_dir(tmp_path)}]", "model=my_llama",
                     "lora/target_modules=qko", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["selected"] == "qko"  # the user's preset, recognised by name
    assert plan["presets"]["all_linear"]["trainable_params"] == 41_943_040  # exact, offline, from its numbers
    # 32 layers x r16 x (q 4096+4096 + k 4096+1024 + o 4096+4096)
    assert plan["presets"]["qko"]["trainable_params"] == 32 * 16 * (8192 + 5120 + 8192)
    assert "41,943,040" in result.stdout and "qko" in result.stdout


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    """`--help | head`: the reader is gone before the help is written; no BrokenPipeError traceback."""
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--help"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
