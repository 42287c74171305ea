"""Reproduce on CPU the SFTTrainer / SFTConfig that `import unsloth` installs on a CUDA machine.

On a GPU, `import unsloth` runs PatchFastRL, which replaces `trl.SFTTrainer` / `trl.SFTConfig` with generated
`UnslothSFTTrainer` / `UnslothSFTConfig`. Their data preparation is not TRL's: `sft_trainer_prepare_dataset` in
unsloth/models/rl_replacements.py swaps `_prepare_dataset` for unsloth_zoo's `sft_prepare_dataset`, edited in
place, and the config gains `max_seq_length=None`. On CPU none of this happens (`import unsloth` uses a CPU backend
that keeps TRL's `_prepare_dataset`), so our code that calls `SFTTrainer._prepare_dataset` would only ever be tested
against TRL's version. This module rebuilds the GPU version from the installed unsloth / unsloth_zoo / trl sources,
by running Unsloth's own rewrite, so tests can check our code against it:

    trainer_cls = build_gpu_sft_trainer(tmp_path)
    with installed_like_unsloth_gpu(trainer_cls, build_gpu_sft_config()):
        ...  # trl.SFTTrainer / trl.SFTConfig are now what a GPU run gets

`unsloth.models` cannot be imported without triton, so rl_replacements.py is read as text and only the rewrite and
the helpers it needs are executed. Import `unsloth` before trl / transformers, as the project does.
Run this file as a script for a self-check of the known GPU-path behaviours.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import importlib.util
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

# The generated module imports these from typing (unsloth_zoo.compiler.create_new_function's header).
_GENERATED_TYPING_HEADER = "from typing import Any, List, Optional, Tuple, Union, Dict, Set, Callable\n"
_GENERATED_MODULE = "unsloth_gpu_sft_prepare_dataset"
# Set on the classes built here, so the originals can be found again while ours are installed.
_MARKER = "_reproduces_unsloth_gpu"


# --- the rewrite, run from rl_replacements.py's text -----------------------------------------------------------

def _rl_replacements_path() -> Path:
    # find_spec("unsloth") does not import unsloth.models (which needs triton).
    package = importlib.util.find_spec("unsloth")
    return Path(package.submodule_search_locations[0]) / "models" / "rl_replacements.py"


def _top_level_definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """Module-level functions and `NAME = ...` assignments by name (imports are supplied separately)."""
    definitions = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign):
            definitions.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return definitions


def _names_read(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _needed_definitions(definitions: dict[str, ast.stmt], root: str) -> list[ast.stmt]:
    """`root` and every module-level definition it reaches, in file order."""
    needed, pending = set(), [root]
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        pending += [n for n in _names_read(definitions[name]) if n in definitions]
    nodes = {id(definitions[name]): definitions[name] for name in needed}
    return sorted(nodes.values(), key=lambda node: node.lineno)


def _unresolved_names(nodes: list[ast.stmt], known: set[str]) -> set[str]:
    """Names the nodes read that are neither `known`, builtins, nor bound inside them (locals, parameters)."""
    walked = [n for node in nodes for n in ast.walk(node)]
    bound = {n.arg for n in walked if isinstance(n, ast.arg)}
    bound |= {n.id for n in walked if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return set().union(*map(_names_read, nodes)) - known - bound - set(dir(builtins))


def _rewriter_namespace() -> dict:
    """What rl_replacements.py imports and the extracted definitions read."""
    from unsloth_zoo.log import logger
    from unsloth_zoo.rl_replacements import RL_REPLACEMENTS

    return {"re": re, "inspect": inspect, "logger": logger, "RL_REPLACEMENTS": RL_REPLACEMENTS}


def _load_rewriter():
    """rl_replacements.sft_trainer_prepare_dataset, executed with only the helpers it needs."""
    path = _rl_replacements_path()
    definitions = _top_level_definitions(ast.parse(path.read_text(), str(path)))
    nodes = _needed_definitions(definitions, "sft_trainer_prepare_dataset")
    namespace = _rewriter_namespace()
    # Fail here, not in a test, when a newer Unsloth makes the rewrite read something we do not supply.
    if missing := _unresolved_names(nodes, set(definitions) | set(namespace)):
        raise RuntimeError(f"sft_trainer_prepare_dataset now reads {sorted(missing)}; supply them in "
                           "_rewriter_namespace")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["sft_trainer_prepare_dataset"]


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
    rewritten = _load_rewriter()("_prepare_dataset", original)
    if rewritten == original or "def _prepare_dataset" not in rewritten:
        raise RuntimeError("Unsloth's rewrite did not replace TRL's _prepare_dataset (its signature match failed)")
    return textwrap.dedent(rewritten)


# --- the generated module ----------------------------------------------------------------------------------------

def _generated_imports(source: str) -> str:
    """Imports as create_new_function writes them: every trl.trainer.sft_trainer name the source mentions.

    Names from elsewhere (ConstantLengthDataset, unsloth_zoo's _iterable_batch_size) are not imported on the GPU
    either; the first is read inside a bare try/except, the second only for an IterableDataset (a NameError there).
    """
    import trl.trainer.sft_trainer as sft_trainer

    names = sorted(n for n in dir(sft_trainer) if not n.startswith("__") and n in source)
    return _GENERATED_TYPING_HEADER + f"from trl.trainer.sft_trainer import ({', '.join(names)})\n"


def _import_file(path: Path, name: str):
    # datasets fingerprints map() functions by pickling them, which needs their module in sys.modules.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_gpu_sft_trainer(workdir: Path) -> type:
    """A subclass of TRL's SFTTrainer whose `_prepare_dataset` is the one a GPU run gets, written under `workdir`.

    Only `_prepare_dataset` is reproduced; `__init__`, `compute_loss` and the rest stay TRL's (the generated
    trainer also rewrites those, e.g. it moves `max_length` into `max_seq_length` for padding-free batching).
    """
    source = gpu_prepare_dataset_source()
    path = Path(workdir) / f"{_GENERATED_MODULE}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_generated_imports(source) + "\n\n" + source)
    module = _import_file(path, _GENERATED_MODULE)
    base = _original("SFTTrainer")
    return type("UnslothSFTTrainer", (base,), {"_prepare_dataset": module._prepare_dataset, _MARKER: True,
                                               "__module__": __name__})


def build_gpu_sft_config() -> type:
    """A subclass of TRL's SFTConfig with the data-preparation parts of UnslothSFTConfig (unsloth/models/rl.py).

    Mirrored: the `max_seq_length: Optional[int] = None` field; `padding_free` defaulting to None ("unset", which
    the generated trainer resolves); `dataset_num_proc` passed through unsloth_zoo's get_dataset_num_proc with
    serial_as_none=False, as the generated __init__ does. Not mirrored (training, not data preparation): the other
    default changes (loss_type="nll", per_device_train_batch_size=4, gradient_accumulation_steps=2, seed=3407,
    optim="adamw_8bit", learning_rate, warmup, weight_decay=0.001, logging_steps=1, report_to="none",
    bf16=fp16=False, ...), the vllm_sampling_params / unsloth_num_chunks / unsloth_logit_chunk_multiplier /
    unsloth_grpo_mini_batch / context_parallel_* fields, the learning-rate and num_train_epochs checks, the
    output_dir fallback, the reentrant gradient-checkpointing pin, the flash-AdamW marks and the kwargs filter.
    The trainer __init__'s move of max_length into max_seq_length (padding-free) is not mirrored either.
    """
    base = _original("SFTConfig")

    def __post_init__(self):
        from unsloth_zoo.dataset_num_proc import get_dataset_num_proc

        self.dataset_num_proc = get_dataset_num_proc(self.dataset_num_proc, serial_as_none=False)
        base.__post_init__(self)

    namespace = {"__annotations__": {"max_seq_length": Optional[int], "padding_free": Optional[bool]},
                 "max_seq_length": dataclasses.field(default=None, metadata={"help": "Maximum sequence length."}),
                 "padding_free": dataclasses.field(default=None, metadata={"help": "None: unset."}),
                 "__post_init__": __post_init__, _MARKER: True, "__module__": __name__}
    return dataclasses.dataclass(type("UnslothSFTConfig", (base,), namespace))


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

    Not mirrored: rl.py's later touches, which concern pickling and `isinstance`, not data preparation (renaming
    the config to `trl.trainer.sft_config.SFTConfig` for pickle, the widened-isinstance shim it then puts at
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
        with installed_like_unsloth_gpu(build_gpu_sft_trainer(Path(workdir)), build_gpu_sft_config()):
            gpu_text, gpu_pc = prepare(text), prepare(conversational)
    print("GPU (Unsloth) rewrite:   text ->", gpu_text, "| prompt/completion ->", gpu_pc)
    # TRL labels both; the rewrite drops text labels and fails prompt/completion on max_length=None.
    reproduced = "labels" in trl_text and "labels" in trl_pc and "labels" not in gpu_text and \
        "'>' not supported between instances of 'NoneType' and 'int'" in gpu_pc
    print("GPU-path behaviour reproduced" if reproduced else "GPU-path behaviour NOT reproduced")
    sys.exit(0 if reproduced else 1)


if __name__ == "__main__":
    import unsloth  # noqa: F401 - before trl / transformers, as the project imports it

    _self_check()
