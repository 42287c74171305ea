"""Shared helpers: run the real CLI in a subprocess, compose configs with Hydra's compose API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
# Two xdist workers each running a CLI whose torch takes every core oversubscribe the CPU, and torch's threads then
# spin against each other: two concurrent quickstarts took 164 s with default threads, 47 s with one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# datasets' own cache of read files and mapped rows, per test process (never a user's shared one)
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-")
# the environment as the test session found it: importing unsloth in-process (some tests do) sets variables such as
# HF_HUB_ENABLE_HF_TRANSFER, which must not leak into the CLI runs of later tests
SESSION_ENV = dict(os.environ)


def offline_env(home: Path, **extra: str) -> dict[str, str]:
    """The machine's environment, offline, with no W&B credentials (HOME points at an empty folder)."""
    env = {k: v for k, v in SESSION_ENV.items() if not k.startswith(("WANDB_", "HF_TOKEN", "FT_DATA_CACHE"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1", **extra)
    return env


def quickstart_eval_off(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """The quickstart evaluates base and trained when training ends (about 3 s). Tests of other things leave that
    out; the shared quickstart run below, and tests that set eval.before_after themselves, keep it."""
    if "experiment=quickstart" in overrides and not any(o.startswith("eval.before_after") for o in overrides):
        return [*overrides, "eval.before_after=false"]
    return list(overrides)


def run_cli(module: str, *overrides: str, home: Path, cwd: Path = REPO, timeout: int = 300,
            **env: str) -> subprocess.CompletedProcess:
    if module == "pipeline.train":
        overrides = tuple(quickstart_eval_off(overrides))
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, env=offline_env(home, **env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def own_data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test prepares data into its own cache: no test depends on another's, or on the user's ~/.cache."""
    monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / "data-cache"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose(*overrides: str):
    """Compose conf/train.yaml with overrides, as the CLI does (hydra config included for ${hydra:...})."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pipeline.config import register_configs, register_resolvers

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=quickstart_eval_off(overrides))


def target_presets() -> dict[str, list[str]]:
    """Every target-module preset as Hydra composes it (what `plan` prices side by side)."""
    from hydra import initialize_config_dir

    from pipeline.config import register_configs, register_resolvers
    from pipeline.config.context import target_presets as presets

    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return presets()


SECRET = "hf_secret_value_123"


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> subprocess.CompletedProcess:
    """`make quickstart` as a user runs it (QLoRA on Unsloth, its evaluation at the end, W&B offline for want of a
    key), with an HF token in the environment; `.args` ends with the run directory. It trains once per test session:
    the first xdist worker to need it runs it, the others wait for it and read its record."""
    import fcntl

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    record = shared / "quickstart.json"
    with (shared / "quickstart.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.is_file():
            home, run_dir = shared / "quickstart-home", shared / "quickstart-run"
            home.mkdir()
            # a secret put into a config value (a W&B tag) is written as its name, never as itself
            result = run_cli("pipeline.train", "experiment=quickstart", "eval.before_after=true",
                             "logger.tags=[${oc.env:HF_TOKEN},kept]", f"hydra.run.dir={run_dir}", home=home,
                             HF_TOKEN=SECRET, WANDB_API_KEY_FILE="/nonexistent")
            record.write_text(json.dumps({"args": result.args, "returncode": result.returncode,
                                          "stdout": result.stdout, "stderr": result.stderr}))
    result = subprocess.CompletedProcess(**json.loads(record.read_text()))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def finished_run(quickstart: subprocess.CompletedProcess) -> Path:
    """The quickstart's run directory, for the commands that work on a finished run; tests that change it work on a
    copy."""
    return Path(quickstart.args[-1].removeprefix("hydra.run.dir="))


def prequantized_copy(folder: Path) -> Path:
    """The tiny model saved pre-quantized, like a hub `*-bnb-4bit` repo: 4-bit FP4 without double quantization, and
    down_proj and lm_head left in 16 bits (settings of its own, which loading it keeps whatever is asked)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    own = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False,
                             bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head", "down_proj"])
    model = AutoModelForCausalLM.from_pretrained(REPO / "assets" / "tiny-llama", quantization_config=own,
                                                 dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama").save_pretrained(folder)
    return folder


TEMPLATE_TOKENS = ["<|im_start|>", "<|im_end|>"]  # the tiny tokenizer's ChatML markers, ids 1 and 2


def zeroed_copy(folder: Path) -> Path:
    """The tiny model with its chat-template tokens' rows zeroed in embed_tokens and lm_head: a base checkpoint whose
    template tokens were never trained (as Llama 3.1 base's <|eot_id|> and header tokens are)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(REPO / "assets" / "tiny-llama", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama")
    with torch.no_grad():
        for token_id in tokenizer.convert_tokens_to_ids(TEMPLATE_TOKENS):
            model.get_input_embeddings().weight[token_id] = 0
            model.get_output_embeddings().weight[token_id] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
