"""`python -m pipeline.export run=<run dir>` (`ft-export`): a verified export of a finished run."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli.common import CONF_DIR, entry, run_after_command

log = logging.getLogger(__name__)


def export_command(after: Any, run: Any) -> dict:
    from pipeline.after.export import check_gguf_tools, export

    if after.export.format == "gguf":
        check_gguf_tools(after.export.quantization)  # before anything is merged
    figures = export(run, after.export)
    if "loss" in figures:
        log.info("check: the run's base and adapter reproduce its recorded losses on %d held-out tokens (off by %.3g; "
                 "within %.3f for %s logits recorded, %s here)", figures["tokens"], figures["reproduced_gap"],
                 figures["reproduced_tolerance"], *figures["logits_dtypes_recorded_reproduced"])
        log.info("check: merged logits within %.3g of base + adapter (max diff %.3g); %d of %d adapted layers changed",
                 figures["logits_tolerance"], figures["logits_max_abs_diff"], figures["layers_changed_by_merge"],
                 figures["adapted_layers"])
        log.info("check: merged %s per-token loss within %.3f of the run's (off by %.3f; mean %.4f, recorded %.4f)",
                 figures["dtype"], figures["token_loss_tolerance"], figures["token_loss_gap"], figures["loss"],
                 figures["recorded_loss"])
    if figures.get("merged_into", run.config.model.name) != run.config.model.name:
        log.info("export: merged into %s, the 16-bit original of the pre-quantized model.name", figures["merged_into"])
    if "gguf" in figures:
        log.info("check: %s read back: %d tensors (%s), %d tokens and the run's chat template; token embeddings "
                 "within %.3g of the merged model's (max diff %.3g)", figures["gguf"], figures["gguf_tensors"],
                 figures["gguf_architecture"], figures["gguf_vocab"], figures["gguf_embedding_tolerance"],
                 figures["gguf_embedding_max_abs_diff"])
    log.info("export: %s written to %s", after.export.format, figures["path"])
    return figures


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="after")
def main(cfg: DictConfig) -> None:
    run_after_command(cfg, export_command)


cli = entry(main)


if __name__ == "__main__":
    cli()
