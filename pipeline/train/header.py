"""What a run prints before its first step, and records of it in summary.json: the model, backend and quantization
as loaded, the target modules as resolved, parameter counts, data, effective batch and run directory."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipeline.data import formats, prepare
from pipeline.model.backends import asked_quantization
from pipeline.model.loaded import loaded_quantization
from pipeline.outputs import report

if TYPE_CHECKING:
    from pipeline.config.context import RunContext
    from pipeline.config.schema import TrainConfig
    from pipeline.outputs.rundir import RunDirectory
    from pipeline.train.precision import Precision

log = logging.getLogger(__name__)


def describe_setup(run: TrainConfig, context: RunContext, precision: Precision, data: Any, built: Any,
                   run_dir: RunDirectory) -> dict:
    """Print the header a reader checks before the first step, and return the same facts for summary.json."""
    model, resolution = built.model, built.resolution
    trainable, total = model.get_nb_trainable_parameters()
    t = run.trainer
    effective_batch = t.per_device_train_batch_size * t.gradient_accumulation_steps * context.world_size
    sharding = "fsdp" if run.distributed.strategy == "fsdp" else "ddp"
    processes = f" x {context.world_size} processes ({sharding})" if context.world_size > 1 else ""
    evaluation = data.datasets.eval
    streamed = data.stream is not None
    train_samples = None if streamed else len(data.datasets.train)  # a stream has no length
    report.print_header({
        "model": f"{run.model.name} ({model.config.model_type})",
        "backend": run.backend,
        "quantization": f"{loaded_quantization(model)} (asked: {asked_quantization(run)}), "
                        f"{precision.name} compute on {precision.device}",
        "target modules": f"{resolution.target_modules + resolution.target_parameters} "
                          f"({resolution.adapted_layers} layers, preset {context.preset})",
        "trainable params": f"{trainable:,} / {total:,} ({100 * trainable / total:.3f}%)",
        **untrained_line(built.untrained),
        "data": f"{'streamed' if streamed else train_samples} train / {len(evaluation) if evaluation else 0} eval "
                f"samples "
                f"({formats.describe(data.source_format, run.data.loss_on, data.datasets.tools)}"
                f"{', from cache' if data.prepared.from_cache else ''})",
        **({"sources": ", ".join(f"{name}: {f['in_mix']} of {f['train_samples']} train samples in the mix ("
                                 f"{f['format']}, weight {f['weight']:g}), {f['trained_tokens']} trained tokens"
                                 for name, f in data.per_source.items())} if data.per_source else {}),
        **({"streaming": f"{run.data.source} read as a stream in chunks of {run.data.streaming_chunk} rows, in "
                         "its order, again from its start when it ends (trainer.max_steps ends training); nothing "
                         "cached; train tokens below describe the first chunk (the sample)"} if streamed else {}),
        "train tokens": prepare.describe(data.prepared.stats["train"]),
        "effective batch": f"{effective_batch} = {t.per_device_train_batch_size} per device x "
                           f"{t.gradient_accumulation_steps} accumulation{processes}",
        "run directory": str(run_dir.path),
    })
    for note in built.notes:
        log.info("note: %s", note)
    return {
        "model_type": model.config.model_type, "quantization": loaded_quantization(model),
        "precision": precision.name, "autocast": precision.autocast, "device": precision.device,
        "loaded": built.loaded, "trainable_params": trainable, "total_params": total,
        "trainable_pct": round(100 * trainable / total, 4), "target_modules": resolution.as_dict(),
        "effective_batch_size": effective_batch, "processes": context.world_size,
        "train_samples": train_samples, "eval_samples": len(evaluation) if evaluation else 0,
        "data_format": data.source_format, "data_tools": list(data.datasets.tools),
        "data_stats": data.prepared.stats_dict(), "data_sources": data.per_source,
        "data_stream": {"chunk_rows": run.data.streaming_chunk, "stats_from": "the first chunk"} if streamed else None,
        "plan_vram_gib": built.plan_vram_gib, "notes": list(built.notes),
        "untrained_tokens": built.untrained.as_dict() if built.untrained else None,
    }


def untrained_line(found: Any) -> dict[str, str]:
    """The header line for embedding rows the checkpoint never trained that the data uses (none: no line)."""
    if found is None or not found.ids:
        return {}
    shown = ", ".join(found.tokens[:8]) + (f" and {len(found.tokens) - 8} more" if len(found.tokens) > 8 else "")
    where = ", ".join(sorted(found.indices)) or "lora.modules_to_save (in full)"
    return {"untrained tokens": f"{shown}: rows all zero in the checkpoint, trained in {where} from the mean of "
                                "the trained rows"}
