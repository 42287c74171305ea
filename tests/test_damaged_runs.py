"""A damaged or foreign run directory gives one line naming the file and what to do, never a traceback: a cut
adapter_config.json, a deleted or cut adapter_model.safetensors, a damaged summary.json or config.resolved.yaml, an
adapter whose shapes were edited, and `train` into a directory whose summary.json is damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e


def damaged_copy(finished_run: Path, tmp_path: Path, damage: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    adapter = run / "adapter"
    if damage == "adapter_config cut":
        text = (adapter / "adapter_config.json").read_text()
        (adapter / "adapter_config.json").write_text(text[: len(text) // 2])
    elif damage == "weights deleted":
        (adapter / "adapter_model.safetensors").unlink()
    elif damage == "weights cut":
        data = (adapter / "adapter_model.safetensors").read_bytes()
        (adapter / "adapter_model.safetensors").write_bytes(data[:100])
    elif damage == "summary cut":
        (run / "summary.json").write_text('{"status": "compl')
    elif damage == "summary binary":
        (run / "summary.json").write_bytes(b"\xff\xfe\x00binary")
    elif damage == "config not yaml":
        (run / "config.resolved.yaml").write_text("model: {name: [unclosed\n")
    elif damage == "shape edited":
        import torch
        from safetensors.torch import load_file, save_file

        weights = load_file(adapter / "adapter_model.safetensors")
        name = next(k for k in weights if "lora_A" in k)
        weights[name] = torch.zeros(weights[name].shape[0] + 3, weights[name].shape[1])
        save_file(weights, adapter / "adapter_model.safetensors")
    return run


@pytest.mark.parametrize(("damage", "line"), [
    ("adapter_config cut", "adapter/adapter_config.json is damaged (not valid JSON"),
    ("weights deleted", "adapter/adapter_model.safetensors is missing: the run's adapter has no weights"),
    ("weights cut", "adapter/adapter_model.safetensors is damaged"),
    ("summary cut", "summary.json is damaged (not valid JSON"),
    ("summary binary", "summary.json is damaged (not valid JSON"),
    ("config not yaml", "config.resolved.yaml is damaged"),
])
def test_a_damaged_run_is_named_in_one_line(damage: str, line: str, finished_run: Path, tmp_path: Path,
                                            home: Path) -> None:
    run = damaged_copy(finished_run, tmp_path, damage)
    result = run_cli("pipeline.export", f"run={run}", home=home)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [result.stderr.strip()] and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: run: {run}/{line}"), result.stderr
    assert "Restore it from a copy, or train the run again." in result.stderr


def test_an_adapter_whose_shapes_were_edited_is_named(finished_run: Path, tmp_path: Path, home: Path) -> None:
    run = damaged_copy(finished_run, tmp_path, "shape edited")
    result = run_cli("pipeline.generate", f"run={run}", "prompt=hi", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: run: {run}/adapter does not fit the base "), \
        result.stderr


def test_train_into_a_directory_with_a_damaged_summary(tmp_path: Path, home: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "runn')
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"hydra.run.dir={run}", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.startswith(f"error: hydra.run.dir: {run}/summary.json is damaged"), result.stderr
    assert (run / "summary.json").read_text() == '{"status": "runn'  # left as it was


def test_a_binary_prompts_file_is_named(finished_run: Path, tmp_path: Path, home: Path) -> None:
    prompts = tmp_path / "prompts.bin"
    prompts.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    result = run_cli("pipeline.generate", f"run={finished_run}", f"prompts_file={prompts}", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [f"error: prompts_file: {prompts} is not UTF-8 text (invalid start "
                                                  "byte at byte 0). Give a text file with one prompt per line."]


def test_an_export_onto_a_full_disk_is_one_line_and_keeps_nothing(finished_run: Path, tmp_path: Path,
                                                                     home: Path) -> None:
    """The run on a small filesystem of its own: room for the run, not for the merged model."""
    import shlex
    import subprocess
    import sys

    from conftest import REPO, offline_env

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs `unshare -m` (root) to mount a small filesystem")
    disk = tmp_path / "disk"
    disk.mkdir()
    copy = [f"--exclude={name}" for name in ("checkpoints", "wandb", "export")]
    export = shlex.join([sys.executable, "-m", "pipeline.export", f"run={disk}/run"])
    script = (f"mount -t tmpfs -o size=400k tmpfs {disk} && tar -C {finished_run} -cf - {' '.join(copy)} . | "
              f"(mkdir {disk}/run && tar -C {disk}/run -xf -) && {export}; rc=$?; "
              f"ls -A {disk}/run > {tmp_path}/left.txt; exit $rc")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, env=offline_env(home),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: export: cannot write to {disk}/run: "), \
        result.stderr[-3000:]
    assert "export" not in (tmp_path / "left.txt").read_text().split()  # no half-written export left


def test_ctrl_c_during_an_export_is_one_line_and_keeps_nothing(finished_run: Path, tmp_path: Path,
                                                               home: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, offline_env

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("export"))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.export", f"run={run}"], cwd=REPO, env=offline_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # loading the libraries and the base
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: stopped at once; nothing half-written was kept")
    assert not (run / "export").exists() or not any((run / "export").iterdir())


def test_a_run_whose_base_model_is_gone_is_named(finished_run: Path, tmp_path: Path, home: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("export", "checkpoints", "wandb"))
    config = run / "config.resolved.yaml"
    text = config.read_text()
    model_name = next(line for line in text.splitlines() if line.startswith("  name: "))
    config.write_text(text.replace(model_name, "  name: /no/such/model", 1))
    result = run_cli("pipeline.export", f"run={run}", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip() == (f"error: run: the run's base model /no/such/model is not there (model.name in "
                                     f"{config}). Put the base model back there, or correct model.name in that file.")
