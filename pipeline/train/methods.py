"""The training objective (`method`): which TRL trainer and config do the work, on which kind of data.

SFT is `pipeline.train.trainer`'s SFTTrainer. The preference methods are TRL's own trainers, given the same trainer
settings (`trainer.*`) plus their method's fields (`method.*`, conf/method/): DPO and KTO (`trl`), ORPO and SimPO
(CPOTrainer with loss_type=simpo; `trl.experimental`). The model they get is the PEFT model the backend built; DPO
and KTO then take their reference from it (TRL copies the adapter as it starts, frozen, into a "ref" adapter: the
base itself for a new adapter, init_from's for a continued one), so no second model is loaded. A new method (GRPO:
prompts, reward functions) is one more `Method`: its data kind, its trainer and config, its settings.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.data.preference import LABELLED, PAIRS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    name: str
    data: str                    # the kind of data it trains on (pipeline.data.preference)
    module: str                  # where TRL keeps its trainer and config
    trainer: str
    config: str
    reference: bool              # scored against a frozen reference (an extra forward without gradients)
    settings: Callable[[Any], dict]  # method.* -> the config's own fields

    def classes(self) -> tuple[type, type]:
        """(trainer, config) as TRL has them now (on a GPU, as `import unsloth` replaced them)."""
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental
        module = importlib.import_module(self.module)
        return getattr(module, self.trainer), getattr(module, self.config)


METHODS = {
    "dpo": Method("dpo", PAIRS, "trl", "DPOTrainer", "DPOConfig", True, lambda m: {
        "beta": m.beta, "loss_type": [m.loss_type], "label_smoothing": m.label_smoothing}),
    "orpo": Method("orpo", PAIRS, "trl.experimental.orpo", "ORPOTrainer", "ORPOConfig", False, lambda m: {
        "beta": m.beta}),
    "simpo": Method("simpo", PAIRS, "trl.experimental.cpo", "CPOTrainer", "CPOConfig", False, lambda m: {
        "loss_type": "simpo", "beta": m.beta, "simpo_gamma": m.simpo_gamma, "cpo_alpha": m.cpo_alpha,
        "label_smoothing": m.label_smoothing}),
    "kto": Method("kto", LABELLED, "trl", "KTOTrainer", "KTOConfig", True, lambda m: {
        "beta": m.beta, "loss_type": m.loss_type, "desirable_weight": m.desirable_weight,
        "undesirable_weight": m.undesirable_weight}),
}
SFT_ONLY = ("packing", "padding_free", "assistant_only_loss", "completion_only_loss", "dataset_kwargs")


def config_kwargs(method: Method, common: dict[str, Any], run: Any) -> dict[str, Any]:
    """The trainer settings every method shares, without SFT's own, plus the method's; DPO and KTO cut a long
    sequence keeping its start (data.overlength=truncate; others were dropped before)."""
    kwargs = {k: v for k, v in common.items() if k not in SFT_ONLY}
    kwargs.update(method.settings(run.method))
    if method.name == "dpo":
        kwargs["truncation_mode"] = "keep_start"
    if method.name in ("orpo", "simpo"):
        kwargs["remove_unused_columns"] = False  # TRL sets it itself, with a warning line
    return kwargs


def notes(method: Method, run: Any) -> list[str]:
    """What a preference trainer does to the settings on its own, one line each."""
    found = []
    if run.lora.dropout:
        found.append(f"method={method.name}: TRL switches dropout off (disable_dropout), so lora.dropout="
                     f"{run.lora.dropout} has no effect")
    return found


def rendered_for_cpo(dataset: Any, tokenizer: Any) -> Any:
    """ORPO's and CPO's trainers render conversations with the chat template and then append EOS to an answer that
    does not end with it, which doubles it where the template writes text after it (ChatML's line break): the
    answers are given rendered, each ending at its last EOS."""
    from trl.data_utils import maybe_apply_chat_template

    eos = tokenizer.eos_token

    def render(row: dict) -> dict:
        out = maybe_apply_chat_template(row, tokenizer)
        for key in ("chosen", "rejected"):
            end = out[key].rfind(eos) if eos else -1
            if end >= 0:
                out[key] = out[key][:end + len(eos)]
        return out

    return dataset.map(render, remove_columns=dataset.column_names, desc="Rendering pairs")


def build_trainer(method: Method, model: Any, tokenizer: Any, train: Any, evaluation: Any, kwargs: dict[str, Any],
                  callbacks: list) -> Any:
    trainer_class, config_class = method.classes()
    if method.name in ("orpo", "simpo"):
        train = rendered_for_cpo(train, tokenizer)
        evaluation = rendered_for_cpo(evaluation, tokenizer) if evaluation is not None else None
    extra = {"ref_model": None} if method.reference else {}
    return trainer_class(model=model, args=config_class(**kwargs), train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, callbacks=callbacks, **extra)


def setup_trainer(run: Any, precision: Any, data: Any, model: Any, asked: dict, callbacks: list,
                  summary: dict) -> Any:
    """TRL's trainer for run.method, on the trainer settings `asked` (SFT's, less its own) and the PEFT model as it
    is; records what it runs with."""
    from pipeline.train import trainer as trainer_lib

    method = METHODS[run.method.name]
    trainer = build_trainer(method, model, data.tokenizer, data.datasets.train, data.datasets.eval,
                            config_kwargs(method, asked, run), callbacks)
    dtype = trainer_lib.adapter_dtype(run.backend, precision)
    if dtype is not None:
        from pipeline.compat import undo_trl_adapter_cast

        undo_trl_adapter_cast(trainer.model, dtype)
    summary.update(trainer=type(trainer).__name__, autocast=trainer_lib.autocast_in_effect(trainer),
                   adapter_dtype=trainer_lib.trainable_dtypes(trainer.model), packing=None)
    ran = trainer_lib.autocast_in_effect(trainer)
    changed = [f"the trainer runs {ran} mixed precision instead of {precision.autocast} (a backend's generated "
               "trainer chooses its own)"] if ran != precision.autocast else []
    for note in [*notes(method, run), *changed]:
        summary["notes"].append(note)
        log.info("note: %s", note)
    return trainer
