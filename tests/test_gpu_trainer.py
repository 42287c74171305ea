"""A whole run under the SFTTrainer and SFTConfig a GPU run gets from Unsloth (rebuilt from its installed source by
`unsloth_gpu_trainer`: its compute_loss, its constructor's checks, its config defaults), and the other places where
Unsloth's GPU import reaches into what we built. See docs/gpu.md, "The GPU path, round two"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, TEMPLATE_TOKENS, compose, offline_env, zeroed_copy

from pipeline.config import to_runconfig

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def zeroed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zeroed_copy(tmp_path_factory.mktemp("zeroed") / "tiny-llama-base")


@pytest.fixture(scope="module")
def gpu_classes(tmp_path_factory: pytest.TempPathFactory):
    import unsloth  # noqa: F401 - before trl, as on a GPU
    from unsloth_gpu_trainer import build_gpu_sft_config, build_gpu_sft_trainer

    return build_gpu_sft_trainer(tmp_path_factory.mktemp("unsloth_gpu")), build_gpu_sft_config()


def train_under_gpu_trainer(model: str, gpu_classes: tuple, folder: Path) -> SimpleNamespace:
    """One epoch of the quickstart on `model`, in this process, with trl.SFTTrainer / trl.SFTConfig being the GPU's:
    its constructor runs unsloth_zoo's fix_untrained_tokens on what we pass, its compute_loss skips TRL's token
    count, its config turns include_num_input_tokens_seen off and leaves padding_free unset."""
    import os

    from unsloth_gpu_trainer import installed_like_unsloth_gpu

    from pipeline.config.context import RunContext
    from pipeline.train import trainer as trainer_lib
    from pipeline.train.recipe import run_recipe

    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "FT_DATA_CACHE")}
    os.environ.update(HF_HUB_OFFLINE="1", FT_DATA_CACHE=str(folder / "data-cache"))
    run = to_runconfig(compose("experiment=quickstart", "logger=none", f"model.name={model}",
                               "trainer.max_steps=-1", "trainer.num_train_epochs=1", "data.max_length=200"))
    build, seen = trainer_lib.build_trainer, {}

    def build_and_keep(*args, **kwargs):  # noqa: ANN002, ANN003
        seen["trainer"] = build(*args, **kwargs)
        return seen["trainer"]

    try:
        trainer_lib.build_trainer = build_and_keep
        with installed_like_unsloth_gpu(*gpu_classes):
            import trl

            assert trl.SFTTrainer is gpu_classes[0]
            result = run_recipe(run, RunContext(run_dir=folder / "run", preset="all_linear"))
    finally:
        trainer_lib.build_trainer = build
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return SimpleNamespace(run=run, dir=folder / "run", summary=result.summary, trainer=seen["trainer"])


@pytest.fixture(scope="module")
def gpu_run(gpu_classes, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return train_under_gpu_trainer(str(REPO / "assets" / "tiny-llama"), gpu_classes, tmp_path_factory.mktemp("gpu"))


@pytest.fixture(scope="module")
def gpu_run_zeroed(zeroed_model: Path, gpu_classes, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return train_under_gpu_trainer(str(zeroed_model), gpu_classes, tmp_path_factory.mktemp("gpu_zeroed"))


# --- 1. untrained template tokens --------------------------------------------------------------------------------

def test_unsloths_own_untrained_token_check_refuses_the_zeroed_base_as_lora_leaves_it(zeroed_model: Path) -> None:
    """The check rebuilt from Unsloth's source is the real one: on the zeroed base with frozen embeddings (what
    LoRA alone leaves), over data that contains the template tokens, it raises the ValueError a GPU run met."""
    import unsloth  # noqa: F401 - unsloth_zoo needs it first
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from unsloth_gpu_trainer import untrained_tokens_walk

    model = AutoModelForCausalLM.from_pretrained(zeroed_model).requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(zeroed_model)
    rows = Dataset.from_list([{"input_ids": tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=True)["input_ids"]}])
    with pytest.raises(ValueError, match=r"Unsloth: Untrained tokens in rows \[\[0\]\] found"):
        untrained_tokens_walk()(model, tokenizer, rows, [], eps=1e-16)


def test_a_gpu_run_on_a_base_with_untrained_template_tokens_trains_those_rows(gpu_run_zeroed: SimpleNamespace) -> None:
    """Through our preparation the GPU trainer's constructor (Unsloth's fix_untrained_tokens among its checks)
    passes, and the adapter holds the rows: trained, no longer the base's zeros nor their starting mean."""
    from safetensors.torch import load_file

    assert gpu_run_zeroed.summary["status"] == "completed"
    found = gpu_run_zeroed.summary["untrained_tokens"]
    assert (found["tokens"], found["ids"]) == (TEMPLATE_TOKENS, [1, 2])
    assert found["trained_in"] == ["embed_tokens", "lm_head"]
    config = json.loads((gpu_run_zeroed.dir / "adapter" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"embed_tokens": [1, 2], "lm_head": [1, 2]}
    weights = load_file(gpu_run_zeroed.dir / "adapter" / "adapter_model.safetensors")
    rows = {k: v for k, v in weights.items() if k.endswith("trainable_tokens_delta")}
    assert len(rows) == 2 and all(v.shape == (2, 64) and v.abs().sum(-1).min() > 0 for v in rows.values())
    assert all(not (v[0] == v[1]).all() for v in rows.values())  # both started at the mean; training moved them


# --- 4. tokens per second ----------------------------------------------------------------------------------------

def test_tokens_are_counted_under_the_gpu_trainer(gpu_run: SimpleNamespace) -> None:
    """Unsloth's compute_loss skips TRL's count and its config turns transformers' off; ours counts every sample of
    the epoch: its tokens seen, and the tokens its labels train (the first position of each predicts nothing)."""
    args = gpu_run.trainer.args
    assert args.include_num_input_tokens_seen in ("no", False)  # Unsloth's default, as on a GPU
    train = gpu_run.trainer.train_dataset
    assert gpu_run.summary["tokens_seen"] == sum(len(ids) for ids in train["input_ids"])
    assert gpu_run.summary["tokens_trained"] == sum(sum(x != -100 for x in labels[1:]) for labels in train["labels"])
    assert gpu_run.summary["tokens_per_second"] > 0 and gpu_run.summary["train_tokens_per_second"] > 0
    rows = [json.loads(line) for line in (gpu_run.dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["tokens_seen"] == gpu_run.summary["tokens_seen"]  # the running count, in every logged row


def test_what_the_gpu_trainer_changes_is_recorded_and_noted(gpu_run: SimpleNamespace) -> None:
    """The settings Unsloth's config chooses itself, against TRL's own, each in trainer_settings and one note."""
    settings, notes = gpu_run.summary["trainer_settings"], gpu_run.summary["notes"]
    assert (settings["loss_type"], settings["torch_empty_cache_steps"]) == ("nll", 250)
    assert "the trainer runs loss_type=nll instead of chunked_nll" in notes
    assert "the trainer runs torch_empty_cache_steps=250 instead of None" in notes
    assert not [n for n in notes if "padding_free" in n or "max_length" in n]  # those stay as we asked


# --- 8. padding-free and max_length ------------------------------------------------------------------------------

def test_the_gpu_trainer_keeps_our_max_length_and_skips_its_padding_free_scan(gpu_run: SimpleNamespace) -> None:
    from unsloth_gpu_trainer import should_auto_padding_free

    args = gpu_run.trainer.args
    assert (args.max_length, args.max_seq_length, args.padding_free) == (200, 200, False)
    assert should_auto_padding_free(args) is False  # no automatic choice, no scan of every row


@pytest.mark.parametrize("max_length", [1024, 700])
def test_a_max_length_of_1024_is_not_taken_for_trls_default(max_length: int, gpu_classes, tmp_path: Path) -> None:
    """The generated constructor treats max_length == 1024 (TRL's default) as "not given" and takes the model's
    max_seq_length; given max_seq_length too (the field Unsloth's config adds), it keeps ours."""
    from unsloth_gpu_trainer import gpu_length_code, installed_like_unsloth_gpu, should_auto_padding_free

    from pipeline.data.formats import Datasets
    from pipeline.train import trainer as trainer_lib
    from pipeline.train.precision import Accelerator, resolve_precision

    run = to_runconfig(compose("experiment=quickstart", "model.max_seq_length=2048", f"data.max_length={max_length}"))
    datasets = Datasets(train=[], eval=None, format="messages", assistant_only_loss=True, completion_only_loss=False)
    cpu = resolve_precision("auto", "unsloth", Accelerator("cpu", "cpu", None, False))
    with installed_like_unsloth_gpu(*gpu_classes):
        args = trainer_lib.build_sft_config(trainer_lib.sft_config_kwargs(run, cpu, tmp_path, datasets, ["none"], "t"))
    assert should_auto_padding_free(args) is False
    exec(gpu_length_code(), {"args": args, "model": SimpleNamespace(max_seq_length=2048)})
    assert args.max_length == max_length


# --- 7. our pristine copy of TRL's trainer, and Unsloth's walk over trl.trainer ---------------------------------

def test_unsloths_trainer_walk_leaves_our_pristine_copy_alone() -> None:
    """On a GPU, `import unsloth` regenerates every lower-case `trl.trainer.*_trainer` attribute; a copy of TRL's
    sft_trainer that matched would get Unsloth's data preparation back."""
    import unsloth  # noqa: F401 - imported after the copy below exists in a sweep that ran backend=hf first
    from unsloth_gpu_trainer import trl_trainer_modules_unsloth_patches

    from pipeline.compat import pristine_trl_module

    copy = pristine_trl_module("sft_trainer")
    walked = trl_trainer_modules_unsloth_patches()
    assert "sft_trainer" in walked  # the walk is real: it finds TRL's own trainers
    assert copy.__name__.rsplit(".", 1)[1] not in walked


# --- 6. CUDA's allocator settings -------------------------------------------------------------------------------

WATCH_IMPORTS = """
import os, sys
order = []
def hook(event, args):
    if event == "import" and args[0] in ("torch", "unsloth") and args[0] not in order:
        order.append(args[0])
        if args[0] == "unsloth":  # the run's console is redirected to its log here: the answer goes to fd 1
            os.write(1, f"imports: {order}\\n".encode())
            os._exit(0)
sys.addaudithook(hook)
sys.argv = ["pipeline.train", *sys.argv[1:]]
from pipeline.cli.train import cli
cli()
"""


def test_the_train_command_imports_unsloth_before_torch(tmp_path: Path, home: Path) -> None:
    """unsloth_zoo sets PyTorch's allocator up (expandable segments) on import, before it imports torch: it only
    counts if nothing imported torch (and so perhaps started CUDA) first."""
    result = subprocess.run([sys.executable, "-c", WATCH_IMPORTS, "experiment=quickstart", "logger=none",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=offline_env(home),
                            capture_output=True, text=True, timeout=300)
    assert "imports: ['unsloth']" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_note_says_when_cuda_started_before_unsloth() -> None:
    from pipeline.model.backends import unsloth as backend
    from pipeline.train.precision import Precision

    gpu, cpu = Precision("cuda", None, True, False), Precision("cpu", None, False, False)
    started = backend.CUDA_STARTED_BEFORE_UNSLOTH
    try:
        backend.CUDA_STARTED_BEFORE_UNSLOTH = True
        assert backend.allocator_notes(gpu)[0].startswith("CUDA started before Unsloth was imported")
        assert backend.allocator_notes(cpu) == []
        backend.CUDA_STARTED_BEFORE_UNSLOTH = False
        assert backend.allocator_notes(gpu) == []
    finally:
        backend.CUDA_STARTED_BEFORE_UNSLOTH = started
