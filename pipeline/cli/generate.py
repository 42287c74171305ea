"""`python -m pipeline.generate run=<run dir> prompt="..."` (`ft-generate`): answers from a finished run.

`prompt=` answers one prompt, `prompts_file=` one per line; with neither, an interactive chat (an empty line or
Ctrl-D ends it). Answers stream to stdout as they are generated.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli.common import CONF_DIR, entry, run_after_command
from pipeline.errors import ConfigError


def prompts_of(after: Any) -> list[str] | None:
    """The prompts asked for; None for a chat."""
    if after.prompt is not None:
        return [after.prompt]
    if after.prompts_file is None:
        return None
    path = Path(after.prompts_file)
    if not path.is_file():
        raise ConfigError("prompts_file", f"file not found: {path}", "give a text file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("prompts_file", f"{path} is not UTF-8 text ({error.reason} at byte {error.start})",
                          "give a text file with one prompt per line") from error
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("prompts_file", f"{path} holds no prompt", "write one prompt per line")
    return prompts


def generate_command(after: Any, run: Any) -> None:
    from pipeline.after import generate

    prompts = prompts_of(after)
    model, tokenizer = generate.load(run, after.generate)
    if prompts is not None:
        for number, prompt in enumerate(prompts):
            if len(prompts) > 1:
                print(("\n" if number else "") + f"### {prompt}", flush=True)
            generate.answer(model, tokenizer, generate.conversation(prompt, after.generate), after.generate)
        return
    chat(model, tokenizer, after.generate)


def chat(model: Any, tokenizer: Any, settings: Any) -> None:
    from pipeline.after import generate

    history: list[dict] = []
    print("chat with the run (an empty line or Ctrl-D ends it)", flush=True)
    while True:
        try:
            prompt = input("you> ").strip()
        except EOFError:
            prompt = ""
        if not prompt:
            return
        sys.stdout.write("model> ")
        reply = generate.answer(model, tokenizer, generate.conversation(prompt, settings, history), settings)
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="after")
def main(cfg: DictConfig) -> None:
    run_after_command(cfg, generate_command)


cli = entry(main)


if __name__ == "__main__":
    cli()
