"""Answer prompts with a finished run: the base with its adapter (as trained, or on the 16-bit base), or its merged
export; prompts rendered with the run's own chat template, tokens streamed as they come."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.after.finished import FinishedRun, check_merged_export, load_adapter
from pipeline.errors import ConfigError, first_line


def load(run: FinishedRun, settings: Any) -> tuple[Any, Any]:
    """(model, tokenizer) for `settings.source`, in eval mode."""
    path = run.path / "export" / "merged_16bit"
    if settings.source == "merged_16bit":  # before torch: a mistake is quick
        check_merged_export(path, run.path, "generate.source")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train.precision import resolve_precision

    precision = resolve_precision(run.config.model.dtype, "hf")
    if settings.source == "merged_16bit":
        dtype = torch.float32 if precision.device == "cpu" else precision.dtype  # CPUs compute in float32
        from safetensors import SafetensorError

        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map(precision))
        except (SafetensorError, OSError, ValueError, KeyError) as error:  # cut or edited files (not the GPU's memory)
            raise ConfigError("generate.source", f"the merged export in {path} is damaged ({first_line(error)})",
                              f"write it again: python -m pipeline.export run={run.path}") from error
        return model.eval(), AutoTokenizer.from_pretrained(path)

    return load_adapter(load_base(run, settings.base, precision), run), \
        AutoTokenizer.from_pretrained(run.adapter)


def load_base(run: FinishedRun, base: str, precision: Any) -> Any:
    """The base as the run loaded it (its quantization, the repo it really came from), or unquantized."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.model.backends import hf

    config = run.config
    if base == "16bit":
        dtype = torch.float32 if precision.device == "cpu" else precision.dtype
        name, revision = run.base_16bit()
        return AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype,
                                                    trust_remote_code=config.model.trust_remote_code,
                                                    device_map=device_map(precision))
    repo = (run.summary.get("loaded") or {}).get("repo") or config.model.name
    as_loaded = dataclasses.replace(config, model=dataclasses.replace(config.model, name=repo),
                                    trainer=dataclasses.replace(config.trainer, gradient_checkpointing=False))
    return hf.load(as_loaded, precision)


def device_map(precision: Any) -> dict:
    return {"": 0 if precision.device == "cuda" else "cpu"}


def answer(model: Any, tokenizer: Any, messages: list[dict], settings: Any, stream: bool = True,
           tools: list | None = None) -> str:
    """The model's reply to `messages` (rendered with the saved chat template and the `tools` offered), streamed to
    stdout when asked."""
    import torch
    from transformers import TextStreamer

    inputs = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(next(model.parameters()).device)
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} \
        if settings.temperature > 0 else {"do_sample": False}
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, streamer=streamer,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def conversation(prompt: str, settings: Any, history: list[dict] | None = None) -> list[dict]:
    system = [{"role": "system", "content": settings.system}] if settings.system else []
    return system + (history or []) + [{"role": "user", "content": prompt}]
