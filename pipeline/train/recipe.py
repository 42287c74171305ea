"""One fine-tuning run, top to bottom: setup_data -> setup_model -> setup_trainer -> train -> save -> evaluate ->
report.

Data is tokenized and checked with the run's one tokenizer, and target modules against a weightless skeleton of the
model, before any weight loads. The run directory is locked while the run uses it; `summary.json` says `running`
(with the pid) from the start, then `completed`, `failed` or `interrupted`; a run is continued with `resume`.
Launched as several processes (torchrun, accelerate launch), every rank runs the same stages on its share of each
batch; rank 0 alone writes the run directory, evaluates before/after and reports (`RunDirectory.writes`).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.context import RunContext
from pipeline.config.resolved import to_plain_dict
from pipeline.config.schema import TrainConfig
from pipeline.errors import ConfigError, RunFailed, first_line
from pipeline.model import init_from, targets, untrained
from pipeline.model.backends import check_options, get_backend
from pipeline.model.loaded import describe_loaded, quantization_notes
from pipeline.model.loading import (
    check_local_model,
    load_model,
    loaded_from_notes,
    model_load_errors,
)
from pipeline.model.skeleton import skeleton_layout
from pipeline.model.untrained import UntrainedTokens
from pipeline.outputs import report, tracking
from pipeline.outputs.rundir import RunDirectory
from pipeline.train import stop
from pipeline.train.data import Data, read_data, setup_data
from pipeline.train.distributed import check_launch, lost_peer
from pipeline.train.header import describe_setup
from pipeline.train.precision import Precision, resolve_precision
from pipeline.train.run_directory import forget_run, open_run_directory, running_summary

log = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint; the run can be resumed. `then`: a scheduler's own
    handler of that signal (submitit's requeue), called once the run is saved and reported."""

    def __init__(self, exit_code: int, run_dir: Any, then: Any = None):
        super().__init__(f"interrupted: training stopped after a checkpoint; continue it with resume=auto "
                         f"hydra.run.dir={run_dir}")
        self.exit_code, self.then = exit_code, then


@dataclass
class Model:
    model: Any               # the PEFT model
    resolution: targets.Resolution
    loaded: dict             # the repo and quantization the weights really came from
    notes: list[str] = field(default_factory=list)
    plan_vram_gib: float | None = None  # what `plan` prices this run at on a GPU, beside the peak it really used
    untrained: UntrainedTokens | None = None  # embedding rows the checkpoint never trained that the data uses


@dataclass
class RecipeResult:
    summary: dict
    model: Any
    tokenizer: Any


def run_recipe(run: TrainConfig, context: RunContext) -> RecipeResult:
    """Train one adapter into the run directory (a new one, or the one `resume` continues)."""
    run_dir, point = open_run_directory(run, context)
    previous = run_dir.read_summary() or {}
    if point is not None and previous.get("status") == "completed":
        return nothing_left_to_train(run_dir)
    started, summary, trainer, wandb_run = time.time(), running_summary(run, run_dir), None, None
    callbacks = precision = None
    try:
        check_local_model(run.model.name)
        if run.init_from:
            init_from.adapter_folder(run.init_from)  # a wrong path costs no data reading or model import
        raw = read_data(run)  # mistakes in the data cost no model import
        backend = get_backend(run.backend)  # before torch and transformers: the Unsloth backend patches them
        stop.raise_if_requested()  # a Ctrl-C that the import swallowed
        precision = resolve_precision(run.model.dtype, run.backend)  # before any weight loads
        report.reset_peaks(precision.device)
        check_options(run, precision.device)
        check_launch(run, context, precision.device)
        data = setup_data(run, raw, write_cache=context.main_process)
        stop.raise_if_requested()
        clock = {"data": time.time()}
        built = setup_model(run, context, backend, precision, data)
        clock["model"] = time.time()
        stop.raise_if_requested()
        summary.update(describe_setup(run, context, precision, data, built, run_dir))
        from pipeline.train.callbacks import RunCallbacks

        callbacks = RunCallbacks.open(run_dir.path / "metrics.jsonl", point.step if point else None, run_dir.writes)
        wandb_run = tracking.start(run, to_plain_dict(run), run_dir.path, context,
                                   run_id=previous.get("wandb_run_id") if point else None)  # the same W&B run
        summary["wandb_run_id"] = getattr(wandb_run, "id", None)
        run_dir.write_summary(summary)
        trainer = setup_trainer(run, context, precision, data, built, run_dir, callbacks.all, wandb_run, summary)
        train(trainer, point, summary, data.stream)
        summary["startup_seconds"] = startup_seconds(started, clock, callbacks.first_step.began)
        check_finite(run, trainer, callbacks.guard)
        if callbacks.graceful.exit_code is not None:
            summary["status"] = "interrupted"
            chained = callbacks.graceful.chained if callbacks.graceful.signal == signal.SIGUSR2 else None
            raise RunInterrupted(callbacks.graceful.exit_code, run_dir.path, chained)
        evaluate_at_end(trainer, data, callbacks.metrics, summary)
        save(run_dir, trainer, data)
        evaluate_before_after(run, run_dir, summary, wandb_run)
        summary.update(status="completed", next=report.next_commands(run_dir.path))
    except RunFailed as error:
        summary.update(status="failed", error=error.line())
        raise
    except ConfigError:
        if point is None and run_dir.writes:
            forget_run(run_dir)  # a mistake found during set-up leaves nothing that looks like a run
            raise
        summary.update(status="failed", error="a config error stopped the resumed run")
        raise
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        raise
    except Exception as error:
        # a full disk or read-only directory, or a lost process of the launch: one line, not a traceback
        fault = run_dir.write_fault(error) or lost_peer(error, context.world_size)
        if fault is not None:
            run_dir.remove_partial_writes()
            summary.update(status="failed", error=fault.line())
            raise fault from error
        summary.update(status="failed", error=first_line(error))
        raise
    finally:
        if run_dir.summary_file.exists() or summary["status"] != "running":
            report_run(run, context, run_dir, summary, trainer, callbacks, started, precision, wandb_run)
    return RecipeResult(summary, trainer.model, data.tokenizer)


# --- the run directory (pipeline/train/run_directory.py opens it) -------------------------------------------------

def nothing_left_to_train(run_dir: RunDirectory) -> RecipeResult:
    summary = run_dir.read_summary()
    log.info("resume: the run in %s already completed at step %s: nothing left to train", run_dir.path,
             summary.get("global_step"))
    return RecipeResult(summary, None, None)


# --- the stages ---------------------------------------------------------------------------------------------------

def setup_model(run: TrainConfig, context: RunContext, backend: Any, precision: Precision, data: Data) -> Model:
    """Targets checked on a weightless skeleton, then the weights loaded, checked again, their untrained rows that
    the data uses found, and LoRA applied (with those rows)."""
    from transformers import set_seed

    with model_load_errors(run.model.name):
        skeleton = skeleton_layout(run.model, context.architecture_applies)
    resolution = targets.resolve(run.lora.target_modules, skeleton.config.model_type, context.preset)
    targets.validate_against_model(resolution, skeleton)
    targets.check_rank_fits(resolution, skeleton, run.lora.r)
    start = init_from.check(run, resolution.target_modules) if run.init_from else None
    from pipeline.plan.estimate import estimate

    planned = estimate(skeleton, run, resolution.target_modules, target_parameters=resolution.target_parameters)
    set_seed(run.seed)
    model = load_model(backend, run, precision)
    loaded = describe_loaded(model)
    resolution, relayout = targets.follow_loaded_model(run.lora.target_modules, context.preset, resolution,
                                                       skeleton, model)
    found = untrained.find_and_check(model, run, data.tokenizer, [data.datasets.train, data.datasets.eval])
    resolution.trainable_token_indices = found.indices if found else {}
    model = backend.apply_lora(model, run, resolution)
    untrained.start_from_mean(model, found)
    if start is not None:
        init_from.load(model, start)
    resolution.trainable_params = model.get_nb_trainable_parameters()[0]  # PEFT's own count
    from pipeline.train.trainer import machine_notes

    notes = [*context.notes, *precision.notes, *machine_notes(run, precision), *resolution.notes,
             *loaded_from_notes(run, loaded), *quantization_notes(run, loaded), *relayout,
             *(found.notes() if found else []), *init_from.notes(start, run.method.name)]
    if run.backend == "unsloth":
        roles = targets.covered_roles(resolution, skeleton.config.model_type)
        notes += [f"Unsloth's fused LoRA fast path is off on GPU: {b}" for b in backend.fast_path_blockers(run, roles)]
        notes += backend.allocator_notes(precision)
    return Model(model, resolution, loaded, notes, round(planned.vram_gib, 3), found)


def setup_trainer(run: TrainConfig, context: RunContext, precision: Precision, data: Data, built: Model,
                  run_dir: RunDirectory, callbacks: list, wandb_run: Any, summary: dict) -> Any:
    """TRL's SFTConfig and SFTTrainer (or the method's trainer); records what the trainer really runs (a backend
    may change it)."""
    from pipeline.train import trainer as trainer_lib

    asked = trainer_lib.sft_config_kwargs(run, precision, run_dir.checkpoints, data.datasets,
                                          ["wandb"] if wandb_run is not None else ["none"],
                                          tracking.run_name(run, context), context.world_size)
    if run.method.name != "sft":
        from pipeline.train.methods import setup_trainer as setup_method_trainer

        return setup_method_trainer(run, precision, data, built.model, asked, callbacks, summary)
    head, notes = trainer_lib.head_settings(built.model)
    asked.update(head)
    reference = trainer_lib.reference_settings(asked)
    trainer = trainer_lib.build_trainer(built.model, data.tokenizer, data.datasets,
                                        trainer_lib.build_sft_config(asked), callbacks, precision, run.backend)
    summary.update(trainer=type(trainer).__name__, autocast=trainer_lib.autocast_in_effect(trainer),
                   adapter_dtype=trainer_lib.trainable_dtypes(trainer.model),
                   trainer_settings=trainer_lib.settings_in_effect(trainer))
    for note in [*notes, *trainer_lib.changed_by_backend(reference, trainer)]:
        summary["notes"].append(note)
        log.info("note: %s", note)
    if data.stream is not None:  # where the stream stands goes into each checkpoint
        from pipeline.train.stream_position import follow

        follow(trainer, data.stream)
        return trainer
    summary["packing"] = trainer_lib.packing_facts(trainer, len(data.datasets.train))
    if summary["packing"]:
        p = summary["packing"]
        log.info("packing: %d samples -> %d sequences of up to %d tokens, %.0f%% filled", p["samples"],
                 p["sequences"], p["max_length"], 100 * p["fill_ratio"])
    return trainer


def train(trainer: Any, point: Any, summary: dict, stream: Any = None) -> None:
    checkpoint = str(point.checkpoint) if point is not None and point.checkpoint else None
    summary["resumed_from"] = checkpoint
    if checkpoint and 0 < trainer.args.max_steps <= point.step:
        # killed after its last checkpoint: the trainer would run one step more, so the checkpoint is the result
        log.info("resume: %s is the last step: nothing left to train", point.checkpoint.name)
        load_adapter_weights(trainer.model, point.checkpoint)
        trainer.state.global_step = point.step
        return
    if checkpoint:
        from pipeline.compat import load_onto_numbered_cpus, load_trained_adapter_before_resume

        if trainer.args.world_size > 1 and trainer.args.device.type == "cpu":
            load_onto_numbered_cpus()  # the optimizer state is loaded onto cpu:<rank>
        load_trained_adapter_before_resume(trainer.model, point.checkpoint)
        if stream is not None:
            from pipeline.train.stream_position import resume_at

            resume_at(trainer, stream, point.checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    if stream is not None and stream.trained:  # how far training read the stream (counted on from a checkpoint)
        summary["data_stream"].update({k: v for k, v in stream.trained.items() if k != "source_state"})


def startup_seconds(started: float, clock: dict, first_step: float | None) -> dict:
    """Where the time before the first step went: reading and preparing data (with the imports it needs), loading
    the model, and from the model loaded to the first step (trainer set-up, the first batches)."""
    return {"data": round(clock["data"] - started, 2), "model": round(clock["model"] - clock["data"], 2),
            "model_to_first_step": round(first_step - clock["model"], 2) if first_step else None}


def load_adapter_weights(model: Any, checkpoint: Any) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(checkpoint / "adapter_model.safetensors")
    set_peft_model_state_dict(model, weights)


def check_finite(run: TrainConfig, trainer: Any, guard: Any) -> None:
    """A NaN or infinite loss, gradient or adapter weight fails the run: no adapter is written as its result."""
    import torch

    where = guard.diverged
    if where is None:
        broken = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        where = (trainer.state.global_step, f"adapter weight {broken[0]}", float("nan")) if broken else None
    if where is None:
        return
    step, what, value = where
    cause = ("16-bit overflow (model.dtype=float16): use model.dtype=auto" if run.model.dtype == "float16" else
             f"a learning rate too high for this model: lower trainer.learning_rate (now {run.trainer.learning_rate})"
             " or keep trainer.max_grad_norm > 0")
    raise RunFailed("training", f"{what} became {value} at step {step}; no adapter was saved",
                    f"likely cause: {cause}")


def evaluate_at_end(trainer: Any, data: Data, metrics: Any, summary: dict) -> None:
    """The eval loss at the last step: the trainer's own evaluation when it just ran one, else one more."""
    if data.datasets.eval is None:
        return
    last = [r for r in metrics.rows if "eval_loss" in r]
    if last and last[-1]["step"] == trainer.state.global_step:
        summary["eval_loss"] = last[-1]["eval_loss"]
    else:
        summary["eval_loss"] = trainer.evaluate()["eval_loss"]


def save(run_dir: RunDirectory, trainer: Any, data: Data) -> None:
    """The final adapter with the run's tokenizer and the reference an export checks itself against, written whole
    or not at all."""
    import json

    if not run_dir.writes:
        return
    from pipeline.after import reference

    rows = data.datasets.eval if data.datasets.eval is not None else \
        data.stream.sample if data.stream is not None else data.datasets.train  # a stream: its first chunk
    samples = reference.pick_samples(rows) if data.datasets.kind == "sft" else \
        reference.preference_samples(rows, data.tokenizer, data.datasets.kind)
    record = {**reference.record(trainer.model, samples), **reference.template_probe(data.tokenizer, data.conversation)}
    data.tokenizer.padding_side = "right"  # Unsloth's GPU trainer leaves it "left" (inference mode)
    run_dir.save_adapter(trainer.model, data.tokenizer, {reference.REFERENCE_FILE: json.dumps(record)})


def evaluate_before_after(run: TrainConfig, run_dir: RunDirectory, summary: dict, wandb_run: Any) -> None:
    """eval.before_after: what `python -m pipeline.evaluate` measures, on the adapter just saved, into eval.json,
    summary.json and W&B. A failure here is one warning line and recorded; the saved adapter stands."""
    if not run.eval.before_after or not run_dir.writes:
        return
    import json

    from pipeline.after.evaluate import evaluate
    from pipeline.after.finished import FinishedRun
    from pipeline.outputs.rundir import write_atomically

    try:
        result = evaluate(FinishedRun(run_dir.path, run, summary), run.eval)
        write_atomically(run_dir.path / "eval.json", json.dumps(result, indent=2) + "\n")
    except Exception as error:  # noqa: BLE001 - an evaluation that fails (memory, disk) must not undo the training
        summary["eval"] = {"error": first_line(error)}
        log.warning("eval.before_after: the evaluation failed (%s); the adapter is saved, retry with "
                    "python -m pipeline.evaluate run=%s", first_line(error), run_dir.path)
        return
    summary["eval"] = result
    tracking.log_eval(wandb_run, result)


def report_run(run: TrainConfig, context: RunContext, run_dir: RunDirectory, summary: dict, trainer: Any,
               callbacks: Any, started: float, precision: Precision | None, wandb_run: Any) -> None:
    """summary.json, loss.svg, W&B's summary: written whatever happened, so a failed sweep job explains itself."""
    rows = callbacks.metrics.rows if callbacks is not None else []
    report.close_progress_bars(trainer)
    if not run_dir.writes:
        return
    summary.update(report.training_facts(trainer.state if trainer is not None else None, rows,
                                         time.time() - started, precision.device if precision else "cpu",
                                         callbacks.tokens if callbacks is not None else None))
    if summary["status"] != "running":
        summary.pop("pid", None)
    run_dir.write_summary(summary)
    if rows:
        try:
            report.plot_loss(run_dir.path, rows, tracking.run_name(run, context))
        except OSError as error:  # a full disk: the summary above is what counts
            log.warning("loss.svg not written: %s", first_line(error))
    tracking.finish(wandb_run, summary, exit_code=0 if summary["status"] == "completed" else 1)
    report.print_summary(summary, run_dir.path)
