"""Will it fit? Each estimate against the memory of the GPUs people rent, and the largest micro-batch that fits.

Activations and logits grow with the micro-batch, everything else (weights, adapter, optimizer) does not, so the
largest batch that fits follows from one estimate: (memory - fixed) // per-sample.
"""

from __future__ import annotations

# GPU memory as nvidia-smi reports it (MiB), grouped by size; a group is as large as its smallest member
GPU_CLASSES = {
    "T4 16GB": 15360,                # Tesla T4
    "L4/A10G/4090 24GB": 23028,      # L4 23034, A10G 23028, RTX 4090 24564
    "A100 40GB": 40536,              # A100-SXM4-40GB (some boards report 40960)
    "A100/H100 80GB": 81559,         # A100 80GB 81920, H100 80GB HBM3 81559
}
CUDA_CONTEXT_GIB = 0.5  # the CUDA context and cuBLAS workspace take this much before PyTorch allocates anything
PER_SAMPLE_PARTS = ("activations", "logits")  # the parts of an estimate that grow with the micro-batch


def usable_gib(mib: int) -> float:
    return mib / 1024 - CUDA_CONTEXT_GIB


def fit(vram_parts: dict[str, float], batch_size: int) -> dict[str, dict]:
    """Per GPU class: whether the configured micro-batch fits, the largest that does, or how many GiB batch 1 lacks."""
    per_sample = sum(vram_parts[p] for p in PER_SAMPLE_PARTS) / batch_size
    fixed = sum(v for k, v in vram_parts.items() if k not in PER_SAMPLE_PARTS)
    result = {}
    for name, mib in GPU_CLASSES.items():
        room = usable_gib(mib) - fixed
        if per_sample <= 0 < room:  # a model so small its activations round to nothing: any batch fits
            result[name] = {"usable_gib": round(usable_gib(mib), 2), "fits": True, "max_batch": None,
                            "short_gib": None}
            continue
        largest = int(room // per_sample) if per_sample > 0 and room > 0 else 0
        result[name] = {"usable_gib": round(usable_gib(mib), 2), "fits": largest >= batch_size,
                        "max_batch": largest or None,
                        "short_gib": None if largest else round(fixed + per_sample - usable_gib(mib), 2)}
    return result


def cell(gpu: dict) -> str:
    """`b<=12` (the largest micro-batch that fits), `any`, or `-3.1 GiB` (what batch 1 lacks)."""
    if gpu["max_batch"] is None and gpu["fits"]:
        return "any"
    return f"b<={gpu['max_batch']}" if gpu["max_batch"] else f"-{gpu['short_gib']:.1f} GiB"


def format_fit(presets: dict[str, dict], selected: str, batch_size: int) -> str:
    """Presets down, GPU classes across: the largest micro-batch that fits (configured: `batch_size`)."""
    widths = [max(len(name), 10) for name in GPU_CLASSES]
    header = f"{'preset':<12} " + " ".join(f"{name:>{w}}" for name, w in zip(GPU_CLASSES, widths, strict=True))
    lines = [header, "-" * len(header)]
    for name, preset in presets.items():
        mark = "*" if name == selected else " "
        cells = []
        for gpu, width in zip(GPU_CLASSES, widths, strict=True):
            smaller_only = preset["fit"][gpu]["max_batch"] and not preset["fit"][gpu]["fits"]  # yours does not fit
            cells.append(f"{cell(preset['fit'][gpu]) + ('!' if smaller_only else ' '):>{width}}")
        lines.append(f"{mark}{name:<11} " + " ".join(cells))
    return "\n".join(lines)
