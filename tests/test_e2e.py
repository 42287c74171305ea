"""Level 3: the real CLI end to end on the tiny offline model (Unsloth, TRL, PEFT, bitsandbytes all real)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import SECRET, run_cli

pytestmark = pytest.mark.e2e
RUN_FILES = ["config.resolved.yaml", "metrics.jsonl", "summary.json", "loss.svg", "adapter/adapter_config.json",
             "adapter/adapter_model.safetensors", "adapter/tokenizer_config.json", ".hydra/config.yaml"]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_completed_run(run_dir: Path) -> dict:
    for name in RUN_FILES:
        assert (run_dir / name).exists(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    summary = summary_of(run_dir)
    assert summary["status"] == "completed"
    assert summary["final_loss"] < summary["initial_loss"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("eval_loss" in r for r in rows)
    return summary


def test_quickstart_learns_its_task_and_says_so(quickstart: subprocess.CompletedProcess, finished_run: Path) -> None:
    run_dir, printed = finished_run, quickstart.stdout + quickstart.stderr
    summary = assert_completed_run(run_dir)
    assert summary["backend"] == "unsloth" and summary["quantization"] == "4-bit"
    assert summary["target_modules"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"]
    assert summary["trainable_params"] == 32768  # 2 layers x r16 x (q 128 + k 96 + v 96 + o 128 + 3 x mlp 192)
    # eval.before_after (on in the quickstart): the held-out answers, base vs trained, printed and recorded
    figures = json.loads((run_dir / "eval.json").read_text())
    assert summary["eval"] == figures
    before, after = figures["before"]["answers"], figures["after"]["answers"]
    assert before["prompts"] == after["prompts"] == 8 and after["exact_match"] > before["exact_match"]
    assert f"exact match on 8 held-out prompts: {before['exact_match']}/8 before -> {after['exact_match']}/8 after" \
        in quickstart.stdout
    example = after["examples"][0]
    assert f"-> {example['answer']!r}" in quickstart.stdout and example["answer"].startswith("Animal: ")
    # no key -> offline W&B in the run directory, with a notice instead of a prompt; the evaluation is in it
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and "logging offline" in printed
    assert "URL not available" not in printed  # W&B's offline warnings (one per checkpoint) stay in its debug log
    assert b"eval/after/exact_match" in next(offline[0].glob("*.wandb")).read_bytes()
    assert list(offline[0].glob("files/media/table/eval/answers_*.table.json"))
    for line in ("trainable params", "effective batch", "target modules", "run directory"):
        assert line in printed
    # secrets never land in files, also where a config value holds one (logger.tags=[${oc.env:HF_TOKEN}])
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert "tags:\n  - <$HF_TOKEN>\n  - kept" in (run_dir / "config.resolved.yaml").read_text()
    assert "note: a config value holds $HF_TOKEN: written as <$HF_TOKEN> in config files and W&B" in printed


def test_quickstart_on_the_hf_backend_with_a_named_template_from_trl(tmp_path: Path, home: Path) -> None:
    result = run_cli("pipeline.train", "experiment=quickstart", "backend=hf", "model.chat_template=llama-3.1",
                     "logger=none", f"hydra.run.dir={tmp_path / 'a'}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = assert_completed_run(tmp_path / "a")
    assert summary["backend"] == "hf" and summary["quantization"] == "4-bit"
    assert "Unsloth" not in result.stdout + result.stderr  # the plain backend never imports (and patches with) it
    assert "<|start_header_id|>" in (tmp_path / "a" / "adapter" / "chat_template.jinja").read_text()
    result = run_cli("pipeline.train", "experiment=quickstart", "backend=hf", "model.chat_template=mistral",
                     f"hydra.run.dir={tmp_path / 'b'}", home=home)
    assert result.returncode == 2
    assert result.stderr.startswith("error: model.chat_template: 'mistral' is not among the templates TRL ships")


# (hf with quantization=none trains to the end in test_resume's hf-16bit case)
@pytest.mark.parametrize("backend,quantization,loaded", [("hf", "int8", "8-bit"), ("unsloth", "none", "none")])
def test_other_quantizations_train(backend: str, quantization: str, loaded: str, tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", f"backend={backend}", f"quantization={quantization}",
                     "logger=none", "trainer.max_steps=6", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(run_dir)
    assert summary["status"] == "completed" and summary["quantization"] == loaded
    assert summary["final_loss"] < summary["initial_loss"]


def test_print_config_does_not_import_torch(home: Path) -> None:
    result = run_cli("pipeline.train", "--cfg", "job", "--resolve", "experiment=llama3_1_8b_alpaca", home=home,
                     PYTHONPROFILEIMPORTTIME="1")  # every import is listed on stderr
    assert result.returncode == 0, result.stderr[-2000:]
    assert "name: unsloth/Meta-Llama-3.1-8B" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "hydra" in imported  # the listing works
    assert not imported & {"torch", "transformers", "unsloth", "trl", "peft"}


def test_every_preset_trains_on_the_hf_backend(tmp_path: Path, home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """(Every preset on Unsloth, at two ranks: the sweep-summary test below.)"""
    sweep = tmp_path / "sweep"
    result = run_cli("pipeline.train", "-m", "experiment=quickstart", "backend=hf",
                     "lora/target_modules=all_linear,attention,minimal,mlp", "logger=none", "trainer.max_steps=2",
                     "data.val_size=0", f"hydra.sweep.dir={sweep}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [summary_of(d) for d in sorted(sweep.iterdir()) if d.name.isdigit()]
    assert len(summaries) == 4 and all(s["status"] == "completed" and s["backend"] == "hf" for s in summaries)
    seen = {s["target_modules"]["preset"]: s["target_modules"] for s in summaries}
    assert seen["minimal"]["target_modules"] == ["q_proj", "v_proj"]
    assert seen["mlp"]["target_modules"] == ["gate_proj", "up_proj", "down_proj"]
    assert seen["attention"]["trainable_params"] == 2 * 16 * (128 + 96 + 96 + 128)  # 2 layers x r16 x (q, k, v, o)
    assert seen["attention"]["trainable_params"] < seen["all_linear"]["trainable_params"]
    # the summary goes to the sweep's W&B group as one more run (offline: into the sweep directory, synced later)
    from omegaconf import OmegaConf

    from pipeline.outputs import sweep as sweep_lib

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(home))
    sweep_lib.finish(sweep, OmegaConf.create({"kind": "wandb", "mode": "offline", "project": "p", "entity": None,
                                              "group": None}))
    logged = next((sweep / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
    assert b"sweep/summary" in logged and b"sweep-summary" in logged
    assert f"sweep-{tmp_path.name}-sweep".encode() in logged  # the group


def test_sweep_summary_over_presets_and_ranks_lists_failed_jobs_too(tmp_path: Path, home: Path) -> None:
    import csv

    sweep = tmp_path / "sweep"
    result = run_cli("pipeline.train", "-m", "experiment=quickstart",
                     "lora/target_modules=all_linear,attention,minimal,mlp", "lora.r=4,8,0", "logger=none",
                     "trainer.max_steps=2", f"hydra.sweep.dir={sweep}", home=home)
    assert result.returncode == 2  # the r=0 jobs are refused (the catalog has the stderr lines)
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 12 and (sweep / "sweep_summary.md").is_file() and (sweep / "sweep.png").stat().st_size > 0
    grid = [(preset, r) for preset in ("all_linear", "attention", "minimal", "mlp") for r in ("4", "8", "0")]
    for row in rows:  # each row names its own job's overrides (Hydra's grid order), a failed job's too
        preset, r = grid[int(row["job"])]
        assert f"lora/target_modules={preset}" in row["overrides"] and f"lora.r={r}" in row["overrides"], row
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 4
    for row in failed:  # each with its own line; a job refused at set-up leaves no run directory
        assert "lora.r=0" in row["overrides"] and not (sweep / row["job"]).exists()
        assert row["error"].startswith("error: lora.r: 0 is out of range")
    completed = [row for row in rows if row["status"] == "completed"]
    run_dirs = sorted(d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit())
    assert len(completed) == len(run_dirs) == 8
    for row in completed:
        summary = summary_of(sweep / row["job"])
        config = (sweep / row["job"] / "config.resolved.yaml").read_text()
        assert row["preset"] == summary["target_modules"]["preset"] and f"r: {row['r']}\n" in config
        assert f"lora/target_modules={row['preset']}" in row["overrides"] and f"lora.r={row['r']}" in row["overrides"]
        for key in ("trainable_params", "runtime_s", "peak_memory_mb", "plan_vram_gib"):
            assert float(row[key]) == summary[key], key
        for key in ("final_loss", "eval_loss"):
            assert abs(float(row[key]) - summary[key]) < 1e-9, key
    params = {(row["preset"], row["r"]): int(row["trainable_params"]) for row in completed}
    assert params[("all_linear", "8")] == 2 * params[("all_linear", "4")] > params[("attention", "8")]
    # printed at the end, before the failed jobs' lines
    assert "| job | overrides | status |" in result.stdout and "best eval loss: " in result.stdout
    assert "4 job(s) failed:" in result.stderr.splitlines() and "Traceback" not in result.stderr
    # rebuilt from the job directories alone
    before = (sweep / "sweep_summary.csv").read_text()
    (sweep / "sweep_summary.csv").unlink()
    rebuilt = run_cli("pipeline.summarize", str(sweep), home=home)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (sweep / "sweep_summary.csv").read_text() == before and "best eval loss: " in rebuilt.stdout
    missing = run_cli("pipeline.summarize", str(tmp_path / "nothing"), home=home)
    assert missing.returncode == 2 and missing.stderr.startswith("error: sweep_dir: ")


def test_plan_cli_writes_plan_json_offline(tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "plan"
    result = run_cli("pipeline.plan", "model=llama3_1_8b", "lora.r=16", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["selected"] == "all_linear" and set(plan["presets"]) == {"all_linear", "attention", "minimal", "mlp"}
    assert plan["presets"]["all_linear"]["trainable_params"] == 41_943_040
    assert "41,943,040" in result.stdout and "6,815,744" in result.stdout
    for key in ("target_modules", "trainable_params", "total_params", "trainable_pct", "adapter_mb", "vram_gib",
                "vram_parts"):
        assert key in plan["presets"]["minimal"]
    # checkpointing is on by default; the plan also prices it off, which needs more memory
    assert plan["presets"]["all_linear"]["vram_gib_checkpointing_flipped"] > plan["presets"]["all_linear"]["vram_gib"]
    # the data is local, the tokenizer of a hub model is not: priced at the limit, and said why
    assert plan["settings"]["priced_length_from"] == "limit" and "cannot be loaded here" in result.stdout
    fits = plan["presets"]["all_linear"]["fit"]
    assert set(fits) == {"T4 16GB", "L4/A10G/4090 24GB", "A100 40GB", "A100/H100 80GB"}
    assert fits["T4 16GB"]["fits"] and fits["A100/H100 80GB"]["max_batch"] > fits["T4 16GB"]["max_batch"] >= 2
    assert "will it fit?" in result.stdout and f"b<={fits['T4 16GB']['max_batch']}" in result.stdout


def test_plan_never_prices_the_preset_for_another_model(tmp_path: Path, home: Path) -> None:
    result = run_cli("pipeline.plan", "model=llama3_1_8b", "model.name=someone/another-model",
                     f"hydra.run.dir={tmp_path / 'plan'}", home=home)
    assert result.returncode == 2  # offline: no config.json for that name, and the preset's numbers are not its
    assert result.stderr.startswith("error: model.name: no config.json for 'someone/another-model'")


def test_moe_experts_train_through_target_parameters(tmp_path: Path, home: Path) -> None:
    import shutil

    from conftest import REPO
    from transformers import AutoModelForCausalLM, MixtralConfig

    model_dir = tmp_path / "tiny-mixtral"
    config = MixtralConfig(vocab_size=505, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           eos_token_id=2, pad_token_id=0, bos_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(REPO / "assets/tiny-llama" / name, model_dir / name)
    sweep = tmp_path / "sweep"
    result = run_cli("pipeline.train", "-m", "experiment=quickstart", "backend=unsloth,hf", f"model.name={model_dir}",
                     "logger=none", "trainer.max_steps=4", f"hydra.sweep.dir={sweep}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        summary = summary_of(sweep / job)
        assert summary["status"] == "completed"
        assert summary["target_modules"]["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
        # 2 layers x (attention r16 x (64+64 + 64+32 + 64+32 + 64+64) + 4 experts x r16 x ((64+256) + (128+64)))
        assert summary["trainable_params"] == 2 * (16 * 448 + 4 * 16 * 512)
