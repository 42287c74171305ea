"""`python -m pipeline.generate`: the run's chat template, streamed answers, the same greedy answer from the adapter
and from its merged export."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, offline_env, run_cli

pytestmark = pytest.mark.e2e
PROMPTS = ["What colour is the sky?", "Add the two numbers.\n2 + 3"]


def test_adapter_and_merged_export_give_the_same_greedy_answers(finished_run: Path, tmp_path: Path,
                                                                 home: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    exported = run_cli("pipeline.export", f"run={run_dir}", "export.dtype=float32", home=home)
    assert exported.returncode == 0, exported.stderr[-3000:]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p.replace("\n", " ") for p in PROMPTS) + "\n")
    answers = {}
    for source in ("generate.source=adapter", "generate.source=merged_16bit"):
        result = run_cli("pipeline.generate", f"run={run_dir}", f"prompts_file={prompts}", source,
                         "generate.base=16bit", "generate.max_new_tokens=24", home=home)
        assert result.returncode == 0, result.stderr[-3000:]
        answers[source] = result.stdout
    adapter, merged = answers.values()
    assert adapter == merged  # 16-bit base + adapter and the float32 merge: the same tokens, greedily
    blocks = [b for b in adapter.split("### ") if b.strip()]
    assert len(blocks) == 2 and all(len(b.strip().splitlines()) >= 2 for b in blocks)  # each prompt answered


def test_one_prompt_as_trained_streams_the_answer(finished_run: Path, home: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from pipeline.after.finished import open_finished_run
    from pipeline.model.backends import hf
    from pipeline.train.precision import resolve_precision

    result = run_cli("pipeline.generate", f"run={finished_run}", f"prompt={PROMPTS[0]}",
                     "generate.max_new_tokens=16", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    # the same as the trained model (the 4-bit base with the adapter) answers through the saved chat template
    run = open_finished_run(str(finished_run))
    model = PeftModel.from_pretrained(hf.load(run.config, resolve_precision("auto", "hf")), run.adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.adapter)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert result.stdout.strip() == expected.strip() and expected.strip()


def test_chat_keeps_the_conversation_and_ends_on_an_empty_line(finished_run: Path, home: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.generate", f"run={finished_run}",
                             "generate.max_new_tokens=8"], input="hello\nWhat colour is the sky?\n\n", cwd=REPO,
                            env=offline_env(home), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model> ") == 2 and result.stdout.count("you> ") == 3


def test_a_missing_merged_export_is_one_line(finished_run: Path, home: Path) -> None:
    result = run_cli("pipeline.generate", f"run={finished_run}", "prompt=hi", "generate.source=merged_16bit",
                     home=home)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: generate.source: there is no merged export in {finished_run}/export/"
                                     f"merged_16bit. Write it first: python -m pipeline.export run={finished_run}.")
