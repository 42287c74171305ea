"""The saved adapter is the trained adapter: PeftModel.from_pretrained on the tiny base gives the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose

from pipeline.config import to_runconfig

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_reloaded_adapter_reproduces_trained_logits(backend: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = to_runconfig(compose("experiment=quickstart", "logger=none", "trainer.max_steps=8", f"backend={backend}"))
    from pipeline.config.context import RunContext
    from pipeline.train.recipe import run_recipe

    result = run_recipe(run, RunContext(run_dir=tmp_path, preset="all_linear"))
    assert result.summary["status"] == "completed"

    import torch
    from peft import PeftModel

    from pipeline.model.backends import get_backend
    from pipeline.train.precision import resolve_precision

    # the tiny base, loaded (4-bit NF4) by the same backend, then the saved adapter on top
    base = get_backend(backend).load(run, resolve_precision(run.model.dtype, backend))
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    trained = result.model.eval()

    batch = result.tokenizer(["What colour is the sky?", "Add the two numbers.\n2 + 3"], return_tensors="pt",
                             padding=True)
    with torch.no_grad():
        expected = trained(**batch).logits
        got = reloaded(**batch).logits
    # the adapter really changed the model, so equal logits mean the adapter weights round-tripped
    with torch.no_grad(), reloaded.disable_adapter():
        untouched = reloaded(**batch).logits
    assert not torch.allclose(untouched, expected, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
