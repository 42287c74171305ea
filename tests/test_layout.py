"""A model's layout written out from a preset's numbers equals the meta-device skeleton's, and `plan` prices a preset
with torch and transformers unimportable, printing exactly what it prints with them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, REPO, compose, offline_env

from pipeline.config import to_runconfig
from pipeline.model.layout import from_architecture, layout_of
from pipeline.model.skeleton import build_meta_model, skeleton_layout
from pipeline.plan import estimate

PRESETS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# runs a module as `python -m` would, with torch and transformers made unimportable first
WITHOUT_TORCH = ("import runpy, sys; sys.modules.update(torch=None, transformers=None); "
                 "runpy.run_module(sys.argv.pop(1), run_name='__main__')")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_shipped_preset_is_written_out_as_its_skeleton_builds_it(preset: str) -> None:
    run = to_runconfig(compose(f"model={preset}"))
    written = from_architecture(run.model.architecture)
    built = layout_of(build_meta_model(run.model))
    assert written is not None, f"{preset}: its architecture numbers are not all read by layout.py"
    assert list(written.linear.items()) == list(built.linear.items())
    assert written.experts == built.experts and written.owned == built.owned
    assert written.parameters == built.parameters
    assert written.config.model_type == built.config.model_type


def test_modules_to_save_and_tied_weights_count_alike_on_both_layouts() -> None:
    run = to_runconfig(compose("model=gemma2_2b", "lora.modules_to_save=[lm_head,embed_tokens]"))  # tied embeddings
    written, built = skeleton_layout(run.model), layout_of(build_meta_model(run.model))
    assert type(written).__name__ == "Layout" and not hasattr(written.config, "to_dict")  # written out, not built
    names = ["q_proj", "v_proj"]
    assert estimate.estimate(written, run, names).as_dict() == estimate.estimate(built, run, names).as_dict()
    # each copy trains in full: the tied matrix counts twice, once per module
    assert written.module_parameters("lm_head") == written.module_parameters("embed_tokens") == 256000 * 2304


def test_an_architecture_key_not_read_here_builds_the_skeleton(tmp_path: Path) -> None:
    # attention_bias changes shapes and layout.py does not read it: the meta model prices it, biases included
    run = to_runconfig(compose("model=llama3_2_1b", "+model.architecture.attention_bias=true"))
    assert from_architecture(run.model.architecture) is None
    layout = skeleton_layout(run.model)
    plain = skeleton_layout(to_runconfig(compose("model=llama3_2_1b")).model)
    assert hasattr(layout.config, "to_dict") and not hasattr(plain.config, "to_dict")  # built, and written out
    biases = 16 * (32 * 64 + 2 * 8 * 64 + 2048)  # q, k, v, o of 16 layers (32 heads of 64, 8 key-value heads)
    assert layout.parameters == plain.parameters + biases
    # a head_dim that Qwen3 needs and does not carry: its default is transformers', so the skeleton decides
    assert from_architecture({**to_runconfig(compose("model=qwen3_8b")).model.architecture, "head_dim": None}) \
        is None
    missing = dict(to_runconfig(compose("model=qwen3_8b")).model.architecture)
    del missing["head_dim"]
    assert from_architecture(missing) is None


def plan_output(tmp_path: Path, home: Path, name: str, preset: str, without_torch: bool) -> tuple[str, dict]:
    run_dir = tmp_path / name
    prefix = ["-c", WITHOUT_TORCH] if without_torch else ["-m"]
    result = subprocess.run([sys.executable, *prefix, "pipeline.plan", f"model={preset}", f"hydra.run.dir={run_dir}"],
                            cwd=REPO, env=offline_env(home), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.replace(str(run_dir), "<run>"), json.loads((run_dir / "plan.json").read_text())


@pytest.mark.parametrize("preset", ["llama3_1_8b", "qwen3_30b_a3b"])
def test_plan_prices_a_preset_without_torch_or_transformers(tmp_path: Path, home: Path, preset: str) -> None:
    with_torch = plan_output(tmp_path, home, "with", preset, without_torch=False)
    without = plan_output(tmp_path, home, "without", preset, without_torch=True)
    assert without == with_torch
    stdout, plan = without
    if preset == "llama3_1_8b":  # today's numbers (README "Choosing target modules")
        assert plan["presets"]["all_linear"]["trainable_params"] == 41_943_040 and "41,943,040" in stdout
        assert "8,072,204,288 parameters in all" in stdout
    else:  # the experts' fused weights are priced as PEFT adapts them
        assert plan["presets"]["all_linear"]["target_modules"][-2:] == ["mlp.experts.gate_up_proj",
                                                                          "mlp.experts.down_proj"]


def test_the_import_block_is_real(tmp_path: Path, home: Path) -> None:
    # the same block makes a command that needs torch fail, so the plan test above cannot pass by accident
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "pipeline.plan", "model=llama3_2_1b",
                             "+model.architecture.attention_bias=true", f"hydra.run.dir={tmp_path / 'p'}"],
                            cwd=REPO, env=offline_env(home), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "halted; None in sys.modules" in result.stderr + result.stdout
