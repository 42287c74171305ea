"""The error line and its helpers (the cases themselves, through the CLI: tests/test_catalog.py)."""

from __future__ import annotations

import errno
from pathlib import Path

from pipeline.errors import ConfigError, did_you_mean, translate_compose_error


def test_error_line_format() -> None:
    assert ConfigError("a.b", "is wrong.", "fix it").line() == "error: a.b: is wrong. Fix it."
    assert ConfigError("a.b", "is wrong", "did you mean 'c'?").line() == "error: a.b: is wrong. Did you mean 'c'?"


def test_did_you_mean_uses_synonyms_then_spelling_then_lists() -> None:
    assert did_you_mean("rank", ["r", "alpha"], {"rank": "r"}) == "did you mean 'r'?"
    assert did_you_mean("alpah", ["r", "alpha"]) == "did you mean 'alpha'?"
    assert did_you_mean("zzz", ["r", "alpha"]) == "choose one of: alpha, r"


def test_unknown_hydra_errors_are_left_to_hydra() -> None:
    assert translate_compose_error(RuntimeError("something else")) is None


def test_a_refused_write_in_the_run_directory_is_one_line(tmp_path: Path) -> None:
    from pipeline.outputs.rundir import RunDirectory

    run_dir = RunDirectory(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints" / "x"))
    wrapped = RuntimeError("basic_ios::clear: iostream error")  # how torch.save reports it
    wrapped.__context__ = full
    fault = run_dir.write_fault(wrapped)
    assert fault is not None and fault.exit_code == 1
    assert fault.line().startswith(f"error: hydra.run.dir: cannot write to {tmp_path}: No space left on device (")
    elsewhere = OSError(errno.EACCES, "Permission denied", "/some/model/config.json")  # not the run directory's
    assert run_dir.write_fault(elsewhere) is None
    assert run_dir.write_fault(ValueError("unrelated")) is None


def test_partial_writes_are_removed_and_complete_checkpoints_kept(tmp_path: Path) -> None:
    from pipeline.outputs.rundir import CHECKPOINT_FILES, RunDirectory

    run_dir = RunDirectory(tmp_path)
    complete, partial = tmp_path / "checkpoints" / "checkpoint-10", tmp_path / "checkpoints" / "checkpoint-20"
    whole = (*CHECKPOINT_FILES, "rng_state.pth", "adapter_model.safetensors")
    for folder, names in ((complete, whole), (partial, ("optimizer.pt",))):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text("x")
    (tmp_path / "summary.json.tmp").write_text("")
    run_dir.remove_partial_writes()
    assert complete.is_dir() and not partial.exists() and not (tmp_path / "summary.json.tmp").exists()


def test_a_name_with_a_path_stays_one_folder() -> None:
    from pipeline.config.resolvers import run_dir_suffix

    assert run_dir_suffix("/../../x") == "_-..-..-x" and run_dir_suffix("my_run") == "_my_run"
    assert run_dir_suffix(None) == ""


def test_a_stop_swallowed_in_a_weakref_callback_prints_nothing(capsys) -> None:  # noqa: ANN001
    import signal
    import sys
    from types import SimpleNamespace

    from pipeline.train import stop

    def unraisable(error: BaseException) -> SimpleNamespace:
        return SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None, err_msg=None, object=None)

    stop._quiet_if_stopped(unraisable(stop.Stopped(signal.SIGINT)))  # raised again at the next stage boundary
    assert capsys.readouterr().err == ""
    previous, sys.__unraisablehook__ = sys.__unraisablehook__, lambda u: sys.stderr.write(f"{u.exc_value}\n")
    try:
        stop._quiet_if_stopped(unraisable(ValueError("other")))
    finally:
        sys.__unraisablehook__ = previous
    assert capsys.readouterr().err == "other\n"
