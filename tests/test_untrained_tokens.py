"""Embedding rows a checkpoint never trained (pipeline.model.untrained): found by Unsloth's own criterion, trained or
refused in one line, never trained past silently. A whole GPU-path run on such a base: tests/test_gpu_trainer.py;
the rows in the merged model and the GGUF: tests/test_export.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, TEMPLATE_TOKENS, run_cli, zeroed_copy


@pytest.fixture(scope="module")
def zeroed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zeroed_copy(tmp_path_factory.mktemp("zeroed") / "tiny-llama-base")


def chat_rows(tokenizer, texts: list[str]):  # noqa: ANN001
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": tokenizer.apply_chat_template(
        [{"role": "user", "content": text}, {"role": "assistant", "content": text}])["input_ids"]} for text in texts])


def test_untrained_rows_are_the_ones_unsloth_resets() -> None:
    """Unsloth's fix_untrained_tokens, given embeddings it may train, resets the rows it finds untrained: the input
    row zero, and the lm_head row zero or repeated among those (Llama 3.1's are equal, not zero). Ours finds the same
    rows, and also the special tokens Unsloth exempts (an all-zero end-of-turn row cannot learn to stop)."""
    import torch
    import unsloth  # noqa: F401 - unsloth_zoo needs it first
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from unsloth_zoo.tokenizer_utils import fix_untrained_tokens

    from pipeline.model.untrained import untrained_rows

    model = AutoModelForCausalLM.from_pretrained(REPO / "assets" / "tiny-llama", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama")
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    shared = torch.randn(head.shape[1])
    with torch.no_grad():
        embedding[[1, 2, 40, 41, 42]] = 0
        head[[1, 40]] = shared   # repeated: untrained
        head[2] = 0              # zero: untrained (but <|im_end|> is the tokenizer's eos)
        head[41] = 0             # zero: untrained
        # row 42: input zero, output its own: trained by the criterion
    ours = {int(i) for i in untrained_rows(model).nonzero()[:, 0]}
    assert ours == {1, 2, 40, 41}

    before = embedding.detach().clone()
    rows = chat_rows(tokenizer, [tokenizer.decode([40, 41, 42])])
    fix_untrained_tokens(model, tokenizer, rows, [], eps=1e-16)  # may train them: resets them itself
    reset = {int(i) for i in (embedding.detach() != before).any(1).nonzero()[:, 0]}
    specials = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert reset == ours - specials == {1, 40, 41}


def test_only_rows_the_data_uses_are_trained_and_template_only_tokens_are_said(zeroed_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.model.untrained import find

    model = AutoModelForCausalLM.from_pretrained(zeroed_model)
    tokenizer = AutoTokenizer.from_pretrained(zeroed_model)
    with __import__("torch").no_grad():
        model.get_input_embeddings().weight[0] = 0   # <|endoftext|>: in no sample
        model.get_output_embeddings().weight[0] = 0
    tokenizer.chat_template += "{# ends with <|endoftext|> #}"  # named by the template
    found = find(model, tokenizer, [chat_rows(tokenizer, ["one", "two"])], None)
    assert (found.ids, found.tokens, found.untrained_rows) == ([1, 2], TEMPLATE_TOKENS, 3)
    assert found.indices == {"embed_tokens": [1, 2], "lm_head": [1, 2]}
    assert found.template_only == ["<|endoftext|>"]
    assert found.notes() == ["the chat template names tokens whose embedding rows are untrained and that no training "
                             "sample contains: <|endoftext|>; they stay untrained (a prompt with them reads zeros)"]
    in_full = find(model, tokenizer, [chat_rows(tokenizer, ["one"])], ["lm_head"])  # lora.modules_to_save
    assert in_full.indices == {"embed_tokens": [1, 2]}
    assert find(AutoModelForCausalLM.from_pretrained(REPO / "assets" / "tiny-llama"), tokenizer,
                [chat_rows(tokenizer, ["one"])], None) is None  # the shipped tiny model has every row trained


def test_refuse_stops_in_one_line_naming_the_tokens(zeroed_model: Path, tmp_path: Path, home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"model.name={zeroed_model}",
                     "lora.untrained_tokens=refuse", f"hydra.run.dir={run_dir}", home=home)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: lora.untrained_tokens: {zeroed_model} has untrained (all-zero) embedding rows for "
        f"{', '.join(TEMPLATE_TOKENS)}, which the training data uses (through model.chat_template or the text): the "
        "model could neither read nor write them. Train those rows: lora.untrained_tokens=train (a few parameters "
        "per token, saved with the adapter), or use a checkpoint with them trained (the Instruct one).")
    assert not (run_dir / "summary.json").exists()
