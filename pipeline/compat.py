"""Every use of a library's private API or version-specific behaviour, in one place, each with its own test.

- TRL's `SFTTrainer._prepare_dataset` (tokenize + masks), taken from TRL's own file even where Unsloth's GPU path
  replaced `trl.SFTTrainer` with a generated class whose preparation differs.
- TRL's `DPOTrainer._prepare_dataset` / `KTOTrainer._prepare_dataset` (the tokens of preference data), from TRL's
  own files, to measure and filter preference data before the trainer tokenizes it again.
- transformers' Trainer resuming a PEFT model that holds several adapters (DPO's and KTO's frozen "ref"): it loads
  only the adapters saved in sub-folders, never the trained one at the checkpoint's root; that one is loaded first.
- TRL 1.14's bf16 cast of the trainable weights of quantized models, undone where it is wrong.
- bitsandbytes 0.50's in-place repack of 4-bit weights on CPU, switched off.
- Hydra's `run_and_report`, wrapped so that user mistakes print as one line (Hydra has no hook for it).
- TRL's shipped chat-template files (`trl/chat_templates/*.jinja`), read without importing TRL.
- A failed Hydra job's exception, read without the stderr line `JobReturn.return_value` prints.
- transformers', TRL's and PEFT's "is it installed" checks (`importlib.util.find_spec`), answered "no" for W&B and
  bitsandbytes in a run that will not use them.
- Unsloth's name tables (`unsloth/models/mapper.py`), read without importing `unsloth.models` (which needs a GPU).
- llama.cpp's `convert_hf_to_gguf.py`, told the pre-tokenizer of a byte-level BPE tokenizer with GPT-2's split rule
  whose fingerprint it does not list (it knows released models' tokenizers by a hash of their output).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

PRISTINE_PREFIX = "trl.trainer._pipeline_pristine_"
# Unsloth's GPU import rewrites every `trl.trainer` attribute that is lower case and ends in "_trainer"
# (`patch_trl_rl_trainers`), a copy of sft_trainer included: the suffix keeps ours out of that walk.
PRISTINE_SUFFIX = "_copy"


def pristine_trl_module(name: str) -> ModuleType:
    """A private copy of `trl.trainer.<name>`, executed from TRL's own file, whatever was patched into `trl` since.

    On a CUDA machine `import unsloth` rebinds `trl.SFTTrainer` / `trl.SFTConfig` (also in `trl.trainer` and its
    submodules) to generated classes: the trainer's `_prepare_dataset` becomes Unsloth's rewrite, which fails on
    prompt/completion data and drops the labels and EOS of text data, and the config gains new defaults. TRL's
    files are untouched, so a copy executed once under its own module name gives back the originals on every
    machine. Relative imports resolve in `trl.trainer`, so the copy shares TRL's helpers.
    """
    module_name = PRISTINE_PREFIX + name + PRISTINE_SUFFIX
    module = sys.modules.get(module_name)
    if module is None:
        origin = importlib.util.find_spec(f"trl.trainer.{name}").origin
        spec = importlib.util.spec_from_file_location(module_name, origin)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # datasets' fingerprinting pickles functions by module name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        # bound in its package like any submodule: dill then pickles its functions' globals by reference, which
        # tokenizing in several processes (TRL's dataset_num_proc) needs
        setattr(importlib.import_module("trl.trainer"), module_name.rsplit(".", 1)[1], module)
    return module


def trl_prepare_dataset() -> Callable[..., Any]:
    """TRL's own `SFTTrainer._prepare_dataset` (tokenize, chat template, EOS, assistant/completion masks)."""
    return pristine_trl_module("sft_trainer").SFTTrainer._prepare_dataset


def trl_preparer_name() -> str:
    """Which code tokenizes and masks the data (part of the data cache key, so another preparer never hits)."""
    from importlib import metadata

    return f"trl {metadata.version('trl')} SFTTrainer._prepare_dataset, from TRL's own file"


def trl_sft_config() -> type:
    """TRL's own `SFTConfig` (Unsloth's GPU replacement adds `max_seq_length=None` and other defaults)."""
    return pristine_trl_module("sft_config").SFTConfig


def trl_tokenize_and_mask(dataset: Any, tokenizer: Any, name: str, *, assistant_only_loss: bool,
                          completion_only_loss: bool, num_proc: int | None = None) -> Any:
    """`input_ids` + `labels` exactly as TRL's SFTTrainer builds them, with the tokenizer alone (no trainer, no
    model, no truncation). `_prepare_dataset` reads three attributes of its trainer; a view carries just those."""
    from types import SimpleNamespace

    args = _preparation_args(assistant_only_loss, completion_only_loss, num_proc)
    view = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=completion_only_loss)
    return trl_prepare_dataset()(view, dataset, tokenizer, args, False, None, name)


@functools.lru_cache(maxsize=8)
def _preparation_args(assistant_only_loss: bool, completion_only_loss: bool, num_proc: int | None) -> Any:
    """The SFTConfig `_prepare_dataset` reads, made once: building one resets accelerate's state, which a stream's
    chunks, prepared while the trainer runs, must not do."""
    import tempfile

    return trl_sft_config()(output_dir=tempfile.gettempdir(), max_length=None, packing=False, shuffle_dataset=False,
                            assistant_only_loss=assistant_only_loss, completion_only_loss=completion_only_loss,
                            bf16=False, fp16=False, report_to="none", dataset_num_proc=num_proc)


def trl_preference_tokenize(dataset: Any, tokenizer: Any, kind: str) -> Any:
    """`prompt_ids` + `chosen_ids`/`rejected_ids` (pairs) or `completion_ids` (labelled) beside each row, exactly as
    TRL's DPOTrainer / KTOTrainer tokenize it (chat template, generation prompt, EOS for plain text), with the
    tokenizer alone and no length limit. `_prepare_dataset` reads the attributes a view carries."""
    import tempfile
    from types import SimpleNamespace

    name = "dpo" if kind == "pairs" else "kto"
    trainer = getattr(pristine_trl_module(f"{name}_trainer"), f"{name.upper()}Trainer")
    config = getattr(pristine_trl_module(f"{name}_config"), f"{name.upper()}Config")
    args = config(output_dir=tempfile.gettempdir(), max_length=None, bf16=False, fp16=False, report_to="none")
    view = SimpleNamespace(_tokenizer=tokenizer, calculate_KL=False, desirable_weight=1.0, undesirable_weight=1.0)
    return trainer._prepare_dataset(view, dataset, tokenizer, args, "preference")


def load_trained_adapter_before_resume(model: Any, checkpoint: Path) -> None:
    """The checkpoint's root adapter ("default") into the model, when sub-folders hold others (TRL's frozen "ref"):
    `Trainer._load_from_checkpoint` then loads only those, and resuming would go on from a new adapter."""
    if not any((folder / "adapter_model.safetensors").is_file() for folder in checkpoint.iterdir() if folder.is_dir()):
        return
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))


@functools.cache
def load_onto_numbered_cpus() -> None:
    """Several processes on CPUs: transformers resumes their optimizer state with `map_location=args.device`, which is
    `cpu:<rank>` there, and torch's deserializer knows only "cpu" (a traceback on every resume). A deserializer of
    its own for "cpu:N" keeps the storage on the CPU (torch.serialization.register_package, torch's public hook)."""
    import torch.serialization

    def tag(storage: Any) -> None:  # saving is torch's own business
        return None

    def restore(storage: Any, location: str) -> Any:
        return storage if location.startswith("cpu:") else None

    torch.serialization.register_package(101, tag, restore)  # a priority torch's own (10 to 26) leave free


def unsloth_16bit_name(name: str) -> str | None:
    """The 16-bit checkpoint Unsloth's own loader takes for a pre-quantized repo name when asked for 16 bits
    (`load_in_4bit=False` in `loader_utils.__get_model_name`: its INT_TO_FLOAT_MAPPER, then MAP_TO_UNSLOTH_16bit);
    None for a name its tables do not know. mapper.py holds only the tables and imports nothing."""
    tables = unsloth_name_tables()
    lower = name.lower()
    return tables["INT_TO_FLOAT_MAPPER"].get(lower) or tables["MAP_TO_UNSLOTH_16bit"].get(lower) if tables else None


@functools.cache
def unsloth_name_tables() -> dict[str, Any] | None:
    """unsloth/models/mapper.py, executed once (None without Unsloth)."""
    spec = importlib.util.find_spec("unsloth")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "mapper.py"
    if not path.is_file():
        return None
    tables: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), tables)
    return tables


def loaded_repo(model: Any) -> str | None:
    """The repo or folder the weights were read from, as transformers records it."""
    return getattr(getattr(model, "config", None), "_name_or_path", None)


def undo_trl_adapter_cast(model: Any, dtype: Any) -> int:
    """Give trainable weights back the dtype `dtype` after TRL 1.14 cast them to bf16; returns how many changed.

    TRL casts the trainable weights of a quantized model to bf16 (marked temporary in `sft_trainer.py`). The
    optimizer then updates bf16 weights directly (small updates round away), fp16 AMP's GradScaler cannot unscale
    bf16 gradients, and a reloaded adapter (PEFT upcasts it) computes differently from the trained one.
    """
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def keep_trainable_4bit_layout(model: Any) -> None:
    """Stop bitsandbytes' CPU backend from repacking 4-bit weights for its AVX512-BF16 kernel.

    bitsandbytes 0.50 repacks a Linear4bit weight in place on the first no-grad forward (an eval step) or
    state_dict() call and never unpacks it: backward through it is then wrong and the base drifts from the
    checkpoint. Unsloth's CPU loader switches this off the same way; GPUs are unaffected.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def wrap_hydra_error_reporting(handle: Callable[[Exception], None]) -> None:
    """Let `handle` see every error of a Hydra app before Hydra's own report (it may exit; if it returns, Hydra
    reports as usual). Hydra formats failures in `hydra._internal.utils.run_and_report` and offers no hook."""
    from hydra._internal import utils as hydra_utils

    original: Callable[[Any], Any] = getattr(hydra_utils.run_and_report, "__wrapped__", hydra_utils.run_and_report)

    def run_and_report(func: Any) -> Any:
        try:
            return func()
        except Exception as ex:  # noqa: BLE001 - everything `handle` does not take goes back to Hydra
            handle(ex)
            failure = ex

            def reraise() -> None:
                raise failure

            return original(reraise)

    run_and_report.__wrapped__ = original  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


def trl_template_files() -> dict[str, Path]:
    """The chat templates TRL ships, by file stem, found without importing TRL (the hf backend must not import
    Unsloth, and importing TRL first would defeat Unsloth's patches on the other backend)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(next(iter(spec.submodule_search_locations))) / "chat_templates"
    return {p.stem: p for p in folder.glob("*.jinja") if not p.stem.endswith("_training")}


def hydra_job_error(job_return: Any) -> BaseException:
    """The exception a failed Hydra job raised. `JobReturn.return_value` re-raises it but also prints
    "Error executing job with overrides: ..." to stderr each time it is read; the stored value does not."""
    return job_return._return_value


def quiet_failed_job(job_return: Any) -> None:
    """Hydra's sweeper reads `return_value` of each job to re-raise the first failure, and that property writes
    "Error executing job with overrides: ..." to stderr; the failures are listed with their own lines instead."""
    from hydra.core.utils import JobReturn

    class QuietJobReturn(JobReturn):
        @property
        def return_value(self) -> Any:
            if self.status.name == "FAILED":
                raise self._return_value
            return self._return_value

        @return_value.setter
        def return_value(self, value: Any) -> None:
            self._return_value = value

    job_return.__class__ = QuietJobReturn


def run_gguf_converter(llama_cpp: str, *args: str) -> None:
    """Run llama.cpp's converter as its own script would (in a subprocess of ours), with one fallback: a tokenizer it
    does not recognise gets tokenizer.ggml.pre "gpt-2" when its tokenizer.json splits exactly as GPT-2's does
    (ByteLevel with the regex, no prefix space, no normalizer), which is what llama.cpp's "gpt-2" pre-type applies.
    `python -c "from pipeline.compat import run_gguf_converter as r; r(*__import__('sys').argv[1:])" DIR ARGS`."""
    import runpy

    folder = Path(llama_cpp).resolve()
    sys.path[:0] = [str(folder), str(folder / "gguf-py")]  # its own gguf-py: the converter needs that version
    from conversion.base import TextModel  # llama.cpp's private module (convert_hf_to_gguf.py imports it)

    recognised = TextModel.get_vocab_base_pre

    def vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return recognised(self, tokenizer)
        except NotImplementedError:
            if splits_like_gpt2(Path(self.dir_model) / "tokenizer.json"):
                return "gpt-2"
            raise

    TextModel.get_vocab_base_pre = vocab_base_pre
    sys.argv = [str(folder / "convert_hf_to_gguf.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


def splits_like_gpt2(tokenizer_json: Path) -> bool:
    import json

    if not tokenizer_json.is_file():
        return False
    spec = json.loads(tokenizer_json.read_text())
    pre = spec.get("pre_tokenizer") or {}
    return (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and spec.get("normalizer") is None)


def hide_from_imports(names: list[str]) -> list[str]:
    """Make installed libraries look absent to this process; returns those hidden (not already imported).

    transformers and TRL import W&B, and PEFT imports bitsandbytes (which pulls in torch's compiler), whenever they
    are installed: about 1 s and 3 s of every run's start-up, also for runs that never log to W&B or quantize. They
    decide with `importlib.util.find_spec`, which answers None for a name whose `sys.modules` entry is None (Python's
    own marker for "not importable"); an `import` of it then fails. Only for a process that runs a single job.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    return hidden
