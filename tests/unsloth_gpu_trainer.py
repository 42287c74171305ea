"""Reproduce on CPU the SFTTrainer / SFTConfig that `import unsloth` installs on a CUDA machine.

On a GPU, `import unsloth` runs PatchFastRL, which replaces `trl.SFTTrainer` / `trl.SFTConfig` with generated
`UnslothSFTTrainer` / `UnslothSFTConfig` (unsloth/models/rl.py). On CPU none of this happens (`import unsloth` takes a
CPU backend), so our code would only ever be tested against TRL's classes. This module rebuilds, from the installed
unsloth / unsloth_zoo / trl sources, the parts of the generated classes that touch what we pass them:

- `_prepare_dataset`: TRL's, put through Unsloth's own rewrite (`sft_trainer_prepare_dataset`, rl_replacements.py);
- `compute_loss`: Unsloth's replacement, which calls transformers' `Trainer.compute_loss` and so skips TRL's
  (and with it TRL's token count);
- `__init__`: the generated signature's extra `tokenizer=None` parameter, then the code rl.py writes into the body
  that concerns us: the `max_length` / `max_seq_length` resolution, and the `RL_EXTRA_ARGS` for sft_trainer
  (unsloth_zoo's `fix_untrained_tokens` and `fix_zero_training_loss`), run with the constructor's arguments;
- the config's defaults: every default rl.py rewrites for sft_trainer (`padding_free=None`,
  `include_num_input_tokens_seen=False`, `loss_type="nll"`, ...), the added `max_seq_length=None` field, and
  `dataset_num_proc` through unsloth_zoo's get_dataset_num_proc, as the generated config does.

    trainer_cls = build_gpu_sft_trainer(tmp_path)
    with installed_like_unsloth_gpu(trainer_cls, build_gpu_sft_config()):
        ...  # trl.SFTTrainer / trl.SFTConfig are now what a GPU run gets

Not reproduced: the rest of the generated `__init__` (mixed-precision switches, collator swaps, for_training /
for_inference), the wrapper unsloth/trainer.py puts around it (sample packing, the padding-free choice: see
`should_auto_padding_free`), Unsloth's model forward. Import `unsloth` before trl / transformers, as the project
does. Run this file as a script for a self-check of the known GPU-path behaviours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from unsloth_source import exec_definition, generated_assignments

# The generated module imports these from typing (unsloth_zoo.compiler.create_new_function's header).
_GENERATED_TYPING_HEADER = "from typing import Any, List, Optional, Tuple, Union, Dict, Set, Callable\n"
_GENERATED_MODULE = "unsloth_gpu_sft_trainer_parts"
# Set on the classes built here, so the originals can be found again while ours are installed.
_MARKER = "_reproduces_unsloth_gpu"
RL = "models/rl.py"
RL_REPLACEMENTS = "models/rl_replacements.py"
# what the generator decides the sft_trainer path on (rl.py's `_patch_trl_rl_trainers_impl`)
SFT_PATH = {"trainer_file": "sft_trainer",
            "call_args": "model = model, args = args, data_collator = data_collator, train_dataset = train_dataset, "
                         "eval_dataset = eval_dataset, processing_class = processing_class"}


# --- the pieces, run from Unsloth's files -----------------------------------------------------------------------

def _rewriter_namespace() -> dict:
    """What rl_replacements.py imports and the extracted definitions read."""
    from unsloth_zoo.log import logger
    from unsloth_zoo.rl_replacements import RL_REPLACEMENTS as ZOO_REPLACEMENTS

    return {"re": re, "inspect": inspect, "logger": logger, "RL_REPLACEMENTS": ZOO_REPLACEMENTS, "torch": None}


def _original(name: str) -> type:
    """trl.trainer.sft_trainer.<name> as it was before any class built here was installed.

    On CPU that SFTTrainer is Unsloth's CPU-backend subclass, which changes only `__init__` (legacy kwargs).
    """
    import trl.trainer.sft_trainer as sft_trainer

    cls = getattr(sft_trainer, name)
    while vars(cls).get(_MARKER):
        cls = cls.__base__
    return cls


def gpu_prepare_dataset_source() -> str:
    """The `_prepare_dataset` a GPU run gets, as a module-level function (Unsloth emits it indented as a method)."""
    original = inspect.getsource(_original("SFTTrainer")._prepare_dataset)
    rewritten = exec_definition(RL_REPLACEMENTS, "sft_trainer_prepare_dataset", _rewriter_namespace())(
        "_prepare_dataset", original)
    if rewritten == original or "def _prepare_dataset" not in rewritten:
        raise RuntimeError("Unsloth's rewrite did not replace TRL's _prepare_dataset (its signature match failed)")
    return textwrap.dedent(rewritten)


def gpu_compute_loss_source() -> str:
    """The `compute_loss` a GPU run gets (rl_replacements.sft_trainer_compute_loss), indented as a method."""
    source = exec_definition(RL_REPLACEMENTS, "sft_trainer_compute_loss", _rewriter_namespace())(
        "compute_loss", inspect.getsource(_original("SFTTrainer").compute_loss))
    if "super().compute_loss" not in source:
        raise RuntimeError("Unsloth's compute_loss no longer defers to Trainer.compute_loss: revisit the rebuild")
    return textwrap.indent(textwrap.dedent(source), "    ")


def gpu_length_code() -> str:
    """The lines rl.py writes into `UnslothSFTTrainer.__init__` that settle `max_length` / `max_seq_length`."""
    values = dict(generated_assignments(RL, "_patch_trl_rl_trainers_impl", SFT_PATH))
    return values["explicit_max_length"] + values["length_check"] + values["max_length_check"]


def gpu_data_checks_code() -> str:
    """The `RL_EXTRA_ARGS["sft_trainer"]` lines, last in the generated `__init__`: unsloth_zoo's
    fix_untrained_tokens and fix_zero_training_loss on the model, tokenizer and train dataset."""
    code = exec_definition(RL_REPLACEMENTS, "sft_trainer_fix_untrained_tokens", {})(SFT_PATH["call_args"], "")
    if "fix_untrained_tokens(" not in code:
        raise RuntimeError("RL_EXTRA_ARGS for sft_trainer no longer call fix_untrained_tokens")
    return code


def gpu_init_code() -> str:
    """The body rl.py writes into `UnslothSFTTrainer.__init__` that concerns what we pass, in its order."""
    return gpu_length_code() + gpu_data_checks_code()


def gpu_config_defaults() -> dict[str, Any]:
    """Every SFTConfig default rl.py rewrites on the sft_trainer path, in the order it applies them."""
    defaults: dict[str, Any] = {}
    for name, value in generated_assignments(RL, "_patch_trl_rl_trainers_impl", SFT_PATH):
        if name == "replacements":
            defaults.update(value)
    if "padding_free" not in defaults or "include_num_input_tokens_seen" not in defaults:
        raise RuntimeError("rl.py no longer rewrites padding_free / include_num_input_tokens_seen: revisit the rebuild")
    return defaults


def should_auto_padding_free(config: Any) -> bool:
    """unsloth/trainer.py's `_should_auto_padding_free`: whether its SFTTrainer wrapper runs the automatic
    padding-free choice (and, with pre-tokenized rows, its scan of every row) for this config."""
    return exec_definition("trainer.py", "_should_auto_padding_free", {"os": os})(config)


def untrained_tokens_walk() -> Any:
    """unsloth_zoo's `fix_untrained_tokens`, as the generated `__init__` imports it."""
    from unsloth_zoo.tokenizer_utils import fix_untrained_tokens

    return fix_untrained_tokens


def trl_trainer_modules_unsloth_patches() -> list[str]:
    """The `trl.trainer` attributes Unsloth's GPU import regenerates (rl.py's `patch_trl_rl_trainers`, run with
    the walk recorded instead of performed)."""
    walked: list[str] = []
    namespace = {"_patch_trl_rl_trainers": walked.append, "_import_trl_experimental_trainers": dict,
                 "_patch_trl_experimental_trainer": lambda *a: None, "logger": None}
    exec_definition(RL, "patch_trl_rl_trainers", namespace)()
    return walked


# --- the generated classes ---------------------------------------------------------------------------------------

def _generated_imports(source: str) -> str:
    """Imports as create_new_function writes them: every trl.trainer.sft_trainer name the source mentions.

    Names from elsewhere (ConstantLengthDataset, unsloth_zoo's _iterable_batch_size) are not imported on the GPU
    either; the first is read inside a bare try/except, the second only for an IterableDataset (a NameError there).
    """
    import trl.trainer.sft_trainer as sft_trainer

    names = sorted(n for n in dir(sft_trainer) if not n.startswith("__") and n in source)
    return _GENERATED_TYPING_HEADER + f"from trl.trainer.sft_trainer import ({', '.join(names)})\n"


def _import_file(path: Path, name: str):
    import importlib.util

    # datasets fingerprints map() functions by pickling them, which needs their module in sys.modules.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _trainer_without_trls_compute_loss() -> type:
    """TRL's SFTTrainer whose compute_loss is transformers' again: the class Unsloth's replacement calls `super()`
    on (in the generated `_UnslothSFTTrainer`, TRL's method is replaced, so `super()` reaches `Trainer`)."""
    from transformers import Trainer

    return type("_UnslothSFTTrainerBase", (_original("SFTTrainer"),), {"compute_loss": Trainer.compute_loss})


def _gpu_init(init_code: str) -> Any:
    """`__init__` as generated: a `tokenizer=None` parameter beside processing_class, the extra code run on the
    arguments, then TRL's constructor with `processing_class = tokenizer if tokenizer is not None else ...`."""

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, tokenizer=None, **kwargs):
        body = dict(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                    eval_dataset=eval_dataset, processing_class=processing_class, tokenizer=tokenizer, os=os)
        exec(init_code, body)  # the generated lines see the constructor's arguments as their locals
        processing_class = tokenizer if tokenizer is not None else processing_class
        super(type(self), self).__init__(model=model, args=args, data_collator=data_collator,
                                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                                         processing_class=processing_class, **kwargs)

    return __init__


def build_gpu_sft_trainer(workdir: Path) -> type:
    """A subclass of TRL's SFTTrainer with the GPU run's `_prepare_dataset`, `compute_loss` and `__init__` code,
    written into a module under `workdir` (datasets pickles the functions it maps)."""
    prepare = gpu_prepare_dataset_source()
    compute_loss = gpu_compute_loss_source()
    source = (_generated_imports(prepare) + "import torch\n\n\n" + prepare +
              "\n\nclass UnslothComputeLoss(_UnslothSFTTrainerBase):\n" + compute_loss + "\n")
    path = Path(workdir) / f"{_GENERATED_MODULE}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("from unsloth_gpu_trainer import _trainer_without_trls_compute_loss\n"
                    "_UnslothSFTTrainerBase = _trainer_without_trls_compute_loss()\n" + source)
    module = _import_file(path, _GENERATED_MODULE)
    trainer = type("UnslothSFTTrainer", (module.UnslothComputeLoss,),
                   {"_prepare_dataset": module._prepare_dataset, _MARKER: True, "__module__": __name__})
    trainer.__init__ = _gpu_init(gpu_init_code())
    return trainer


def build_gpu_sft_config() -> type:
    """A subclass of TRL's SFTConfig with UnslothSFTConfig's defaults (those rl.py rewrites on the sft_trainer
    path), its `max_seq_length: Optional[int] = None` field, and `dataset_num_proc` passed through unsloth_zoo's
    get_dataset_num_proc with serial_as_none=False, as the generated config's `__init__` does.

    Not mirrored: the vllm_sampling_params / unsloth_num_chunks / unsloth_logit_chunk_multiplier /
    unsloth_grpo_mini_batch / context_parallel_* fields, the learning-rate and num_train_epochs checks, the
    output_dir fallback, the reentrant gradient-checkpointing pin, the flash-AdamW marks and the kwargs filter.
    """
    base = _original("SFTConfig")
    fields = {f.name: f for f in dataclasses.fields(base)}
    annotations: dict[str, Any] = {"max_seq_length": Optional[int]}
    namespace: dict[str, Any] = {"max_seq_length": dataclasses.field(default=None)}
    for name, value in gpu_config_defaults().items():
        if name in fields:
            annotations[name] = fields[name].type
            namespace[name] = dataclasses.field(default_factory=lambda v=value: v) if isinstance(value, dict) \
                else dataclasses.field(default=value)

    def __post_init__(self):
        from unsloth_zoo.dataset_num_proc import get_dataset_num_proc

        self.dataset_num_proc = get_dataset_num_proc(self.dataset_num_proc, serial_as_none=False)
        base.__post_init__(self)

    namespace.update({"__annotations__": annotations, "__post_init__": __post_init__, _MARKER: True,
                      "__module__": __name__})
    config = dataclasses.dataclass(type("UnslothSFTConfig", (base,), namespace))
    globals()["UnslothSFTConfig"] = config  # checkpoints pickle the training arguments by module and name
    return config


# --- installing them where unsloth/models/rl.py does --------------------------------------------------------------

def _install_targets() -> list[tuple[object, str]]:
    """Every (module, attribute) rl.py assigns the generated trainer / config to."""
    import trl
    import trl.trainer
    import trl.trainer.sft_config
    import trl.trainer.sft_trainer

    modules = (trl, trl.trainer, trl.trainer.sft_trainer)
    # rl.py also replaces SFTConfig in trl.trainer.sft_config (the config's own module).
    return [(m, "SFTTrainer") for m in modules] + [(m, "SFTConfig") for m in (*modules, trl.trainer.sft_config)]


@contextlib.contextmanager
def installed_like_unsloth_gpu(trainer_cls: type, config_cls: type) -> Iterator[None]:
    """Assign the classes as unsloth/models/rl.py does after generating them; restore the originals on exit.

    Not mirrored: rl.py's later touches, which concern pickling and `isinstance`, not what we pass (renaming the
    config to `trl.trainer.sft_config.SFTConfig` for pickle, the widened-isinstance shim it then puts at
    `trl.trainer.sft_trainer.SFTConfig`, pinning the pristine config's loss_type, wrapping `evaluate`).
    """
    targets = _install_targets()
    saved = [(module, attr, getattr(module, attr)) for module, attr in targets]
    try:
        for module, attr in targets:
            setattr(module, attr, trainer_cls if attr == "SFTTrainer" else config_cls)
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


# --- self-check ----------------------------------------------------------------------------------------------------

def _self_check() -> None:
    import tempfile
    import types

    import datasets
    import transformers
    import trl
    from datasets import Dataset

    datasets.disable_progress_bars()
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(__file__).parent.parent / "assets" / "tiny-llama")
    view = types.SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    text = Dataset.from_list([{"text": "hello there"}])
    conversational = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                         "completion": [{"role": "assistant", "content": "yo"}]}])

    def prepare(dataset):
        args = trl.SFTConfig(output_dir=tempfile.gettempdir(), max_length=None, packing=False, shuffle_dataset=False,
                             completion_only_loss=True, bf16=False, fp16=False, report_to="none")
        try:
            return sorted(trl.SFTTrainer._prepare_dataset(view, dataset, tokenizer, args, False, None, "train")
                          .column_names)
        except Exception as error:  # the self-check reports whatever the preparation raises
            return f"{type(error).__name__}: {error}"

    trl_text, trl_pc = prepare(text), prepare(conversational)
    print("TRL's _prepare_dataset:  text ->", trl_text, "| prompt/completion ->", trl_pc)
    with tempfile.TemporaryDirectory() as workdir:
        config = build_gpu_sft_config()
        with installed_like_unsloth_gpu(build_gpu_sft_trainer(Path(workdir)), config):
            gpu_text, gpu_pc = prepare(text), prepare(conversational)
    print("GPU (Unsloth) rewrite:   text ->", gpu_text, "| prompt/completion ->", gpu_pc)
    defaults = config(output_dir=tempfile.gettempdir())
    print("GPU config defaults:     padding_free =", defaults.padding_free, "| include_num_input_tokens_seen =",
          defaults.include_num_input_tokens_seen, "| loss_type =", defaults.loss_type)
    # TRL labels both; the rewrite drops text labels and fails prompt/completion on max_length=None.
    reproduced = "labels" in trl_text and "labels" in trl_pc and "labels" not in gpu_text and \
        "'>' not supported between instances of 'NoneType' and 'int'" in gpu_pc and defaults.padding_free is None
    print("GPU-path behaviour reproduced" if reproduced else "GPU-path behaviour NOT reproduced")
    sys.exit(0 if reproduced else 1)


if __name__ == "__main__":
    import unsloth  # noqa: F401 - before trl / transformers, as the project imports it

    _self_check()
