"""data.streaming: where the training stream stood at each checkpoint, saved with it, and picked up on resume.

The trainer's data loader reads ahead of the step being trained (accelerate keeps the next batch), so the stream's
live position is not the checkpoint's. The collator, called once for each batch as it is read, notes the position
after that batch; at a checkpoint of step N (counted from where this process began) the position after batch
N x gradient_accumulation_steps is the one saved, as `stream_position.json` beside the adapter, written before the
trainer writes the checkpoint's own files (so a complete checkpoint always holds it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pipeline.data.streaming import Position, TrainStream
from pipeline.outputs.rundir import write_atomically

log = logging.getLogger(__name__)
POSITION_FILE = "stream_position.json"


class PositionAfterEachBatch:
    """The trainer's collator, noting the stream's position after each batch it collates."""

    def __init__(self, collator: Any, stream: TrainStream) -> None:
        self.collator, self.stream = collator, stream
        self.batches = 0
        self.after: dict[int, dict] = {}  # batches read -> the position then

    def __call__(self, examples: list[dict]) -> Any:
        self.batches += 1
        self.after[self.batches] = asdict(self.stream.position)
        return self.collator(examples)

    def position_after(self, batches: int) -> dict:
        """The position after `batches` batches (from the start: where the stream began); older ones forgotten."""
        position = self.after.get(batches) if batches else asdict(self.stream.start or Position())
        for seen in [b for b in self.after if b < batches]:
            del self.after[seen]
        return position


class SavePosition(TrainerCallback):
    """Writes the stream's position at each checkpoint into the checkpoint's folder."""

    def __init__(self, reader: PositionAfterEachBatch) -> None:
        self.reader, self.first_step = reader, 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.first_step = state.global_step  # a resumed run's batches count from its checkpoint

    def trained(self, args: Any, state: Any) -> dict:
        """The position after the batches of the steps trained so far."""
        return self.reader.position_after((state.global_step - self.first_step) * args.gradient_accumulation_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Written before the trainer saves the checkpoint (the flow and stop callbacks before this one have decided
        it): a checkpoint the trainer completed always holds its position."""
        if control.should_save and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(folder / POSITION_FILE, json.dumps(self.trained(args, state)) + "\n")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reader.stream.trained = self.trained(args, state)


def follow(trainer: Any, stream: TrainStream) -> None:
    """Note the stream's position batch by batch and save it with each checkpoint."""
    reader = PositionAfterEachBatch(trainer.data_collator, stream)
    trainer.data_collator = reader
    trainer.add_callback(SavePosition(reader))


def resume_at(trainer: Any, stream: TrainStream, checkpoint: Path) -> None:
    """The stream starts where the checkpoint's position says, and the trainer skips no batches itself; a checkpoint
    without one (stopped between its files) leaves the trainer's own skipping, which reads the batches again."""
    saved = checkpoint / POSITION_FILE
    if not saved.is_file():
        log.info("resume: %s has no %s: the trainer skips the %s's samples by reading them again", checkpoint.name,
                 POSITION_FILE, "stream")
        return
    stream.start = read_position(saved)
    trainer.args.ignore_data_skip = True


def read_position(saved: Path) -> Position:
    """A damaged or edited position file is named in one line (a resume must not start the stream elsewhere)."""
    from dataclasses import fields

    from pipeline.errors import ConfigError, first_line

    fix = (f"delete it to resume by reading the stream's trained batches again, or resume from an earlier "
           f"checkpoint ({saved.parent.parent})")
    try:
        value = json.loads(saved.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError("resume", f"{saved} is damaged (not valid JSON: {first_line(error)})", fix) from error
    names = [field.name for field in fields(Position)]
    counts = [name for name in names if name != "source_state"]
    if not isinstance(value, dict) or set(value) != set(names) or not isinstance(value["source_state"], dict | None) \
            or not all(type(value[name]) is int and value[name] >= 0 for name in counts):
        raise ConfigError("resume", f"{saved} is damaged (not the position {', '.join(names)})", fix)
    return Position(**value)
