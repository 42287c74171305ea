"""The error catalog: every bad input and fault we know of, in one table, through the real CLI.

The contract (README, "Mistakes are one line"): a mistake gives exit code 2 and one line on stderr,
`error: <dotted.key>: <problem>. <fix>`, no traceback, no library chatter on stdout, and nothing left on disk that
looks like a run. A fault during a run (full disk, NaN) gives one line, exit 1, and a `summary.json` that says
`failed` and why. Settings this machine cannot honour are replaced with a note the run prints and records.

What is a behaviour rather than a line and an exit code is tested beside its feature: a secret from the environment
written as <$NAME> in config files and W&B (test_e2e), W&B's offline warnings kept off the terminal (test_e2e), a
damaged data-cache entry rebuilt and a file replaced under the same size and time read again (test_data_cache), a
folder's documentation files left out and said (test_data), SIGUSR2 under a scheduler's handler and a job SLURM
requeued (test_resume), the failed jobs of a sweep under submitit and the README's Optuna line (test_sweeps), a mistake
under torchrun, a killed process and Ctrl-C under distributed.processes (test_distributed), `--help | head` (test_cli).
"""

from __future__ import annotations

import fcntl
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, offline_env, quickstart_eval_off

pytestmark = pytest.mark.e2e

MESSAGES_ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
PROGRESS_BAR = re.compile(r"\d+%\||it/s\]|s/it\]|^\s*(\x1b\[A)?\s*$")
OUR_LOG_LINE = re.compile(r"^\[[^\]]+\]\[(pipeline[\w.]*|HYDRA)\]")
NOT_HYDRA = {"pipeline.summarize"}  # a plain command line: no hydra.run.dir added
RESTORE = "Restore it from a copy, or train the run again."  # what a damaged file of a finished run asks


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    line: str                      # the error line starts with this (a success case: a line stdout must hold)
    command: str = "pipeline.train"
    exit: int = 2
    lines: int = 1                 # lines on stderr, progress bars aside
    files: tuple[tuple[str, bytes], ...] = ()   # written under {tmp} first
    env: tuple[tuple[str, str | None], ...] = ()  # None: removed from the environment
    leaves: tuple[str, ...] = ()   # what the run directory holds after (empty: no run directory at all)
    status: str | None = None      # summary.json's status, when one is left
    setup: str | None = None       # "completed", "locked", "resumable", "finished", "tmpfs:<size>", "ro", "sigterm",
                                   # "sigint"; two joined by "+" ("finished+sigint")
    damage: str | None = None      # with setup "finished": what is done to the copy first (DAMAGES)
    ends: str = ""                 # the error line ends with this (its fix, after a middle that varies)
    multirun: bool = False
    says: str = ""                 # a line our own log must also print (stdout)
    summary: tuple[tuple[str, object], ...] = ()  # values summary.json must hold


def train(name: str, *args: str, line: str, **kw) -> Case:
    return Case(name, tuple(quickstart_eval_off(("experiment=quickstart", "logger=none", *args))), line, **kw)


def data(name: str, content: str | bytes, *args: str, line: str, file: str = "data.jsonl", **kw) -> Case:
    raw = content.encode() if isinstance(content, str) else content
    return train(name, "data.format=auto", f"data.source={{tmp}}/{file}", *args, line=line,
                 files=((file, raw),), **kw)


CASES = [
    # --- config values: caught before anything heavy is imported -------------------------------------------------
    train("unknown key with a synonym", "lora.rank=8", line="error: lora.rank: unknown key. Did you mean 'lora.r'?"),
    train("rank zero", "lora.r=0", line="error: lora.r: 0 is out of range"),
    train("a list of target presets", "lora/target_modules=[attention,mlp]",
          line="error: lora/target_modules: [attention,mlp] merges presets, and the last one's list replaces the "
          "others' (only mlp would be adapted). Give one preset, or all their roles: "
          "'lora.target_modules=[q,k,v,o,gate,up,down]'"),
    train("'+' on a key the config has", "+lora.r=8",
          line="error: lora.r: is already in the config, and '+' adds a new key. Drop the '+'"),
    train("a '~' in a value unquoted", "name=~x",
          line="error: name: '~x' holds a character Hydra reads only inside quotes"),
    train("a non-ASCII value unquoted", "name=café",
          line="error: name: 'café' holds a character Hydra reads only inside quotes"),
    train("LoRA on the output layer", "lora.target_modules=[q_proj,lm_head]",
          line="error: lora.target_modules: 'lm_head' is the output layer"),
    train("--cfg with a value Hydra does not offer", "--cfg", "bogus",
          line="error: --cfg: 'bogus' is not one of job, hydra, all"),
    train("--info with a value Hydra does not offer", "--info", "bogus",
          line="error: --info: 'bogus' is not one of all, config, defaults, defaults-tree, plugins, searchpath"),
    train("seed negative", "seed=-1", line="error: seed: -1 is out of range: must be in [0, 2**32) (numpy's and "
          "torch's seeds). Use e.g. seed=3407."),
    train("seed too large", "seed=4294967296", line="error: seed: 4294967296 is out of range"),
    train("streaming without max_steps", "data.streaming=true", "trainer.max_steps=-1",
          line="error: trainer.max_steps: is needed with data.streaming=true"),
    train("streaming with a fraction held out", "data.streaming=true", "data.val_size=0.1",
          line="error: data.val_size: 0.1 is a fraction, and a stream has no length"),
    train("streaming preference pairs", "data.streaming=true", "data.val_size=8", "method=dpo",
          line="error: data.streaming: streams SFT data; method=dpo reads its pairs whole"),
    train("streaming several sources", "data.streaming=true", "data.val_size=0",
          "data.sources={a: {source: assets/data/tiny_messages.jsonl}}",
          line="error: data.sources: cannot be streamed"),
    train("stopping strategy under concat", "data.stopping_strategy=all_exhausted",
          "data.sources={a: {source: assets/data/tiny_messages.jsonl}}",
          line="error: data.stopping_strategy: all_exhausted applies to data.mix=interleave"),
    data("streamed file without rows", "", "data.streaming=true", "data.val_size=0",
         line="error: data.source: the dataset is empty"),
    train("dropout above one", "lora.dropout=1.5", line="error: lora.dropout: 1.5 is out of range"),
    train("alpha negative", "lora.alpha=-1", line="error: lora.alpha: -1 is out of range"),
    train("rank not a number", "lora.r=sixteen", line="error: lora.r: 'sixteen' is not an integer"),
    train("unknown trainer key", "trainer.lr=1e-4",
          line="error: trainer.lr: unknown key. Did you mean 'trainer.learning_rate'?"),
    train("added key with a synonym", "+lora.rank=8", line="error: lora.rank: unknown key. Did you mean 'lora.r'?"),
    train("added unknown key", "+trainer.foo=1", line="error: trainer.foo: unknown key"),
    train("top-level synonym", "lr=1e-4", line="error: lr: unknown key. Did you mean 'trainer.learning_rate'?"),
    train("unknown top-level key", "foo=1", line="error: foo: unknown key. Choose one of: backend, data"),
    train("required value null", "model.name=null", line="error: model.name: cannot be null"),
    train("list given a word", "lora.target_modules=q", line="error: lora.target_modules: expects a list"),
    train("mapping given a number", "data.columns=5", line="error: data.columns: 5 is not a mapping"),
    train("learning rate above one", "trainer.learning_rate=2", line="error: trainer.learning_rate: 2.0 is out of"),
    train("learning rate a list", "trainer.learning_rate=[1,2]",
          line="error: trainer.learning_rate: '[1, 2]' is not a number"),
    train("broken interpolation", "trainer.learning_rate=${oops}",
          line="error: trainer.learning_rate: cannot resolve its interpolation: Interpolation key 'oops' not found"),
    train("unclosed bracket", "lora.target_modules=[q_proj",
          line="error: lora.target_modules: cannot parse the override (no viable alternative at input '[q_proj')"),
    train("seed not a number", "seed=abc", line="error: seed: 'abc' is not an integer"),
    train("negative max_steps", "trainer.max_steps=-5", line="error: trainer.max_steps: -5 is out of range"),
    train("batch size zero", "trainer.per_device_train_batch_size=0",
          line="error: trainer.per_device_train_batch_size: 0 is out of range"),
    train("accumulation zero", "trainer.gradient_accumulation_steps=0",
          line="error: trainer.gradient_accumulation_steps: 0 is out of range"),
    train("negative warmup", "trainer.warmup_steps=-1", line="error: trainer.warmup_steps: -1.0 is out of range"),
    train("keep zero checkpoints", "trainer.save_total_limit=0",
          line="error: trainer.save_total_limit: 0 is out of range"),
    train("unknown scheduler", "trainer.lr_scheduler_type=bogus",
          line="error: trainer.lr_scheduler_type: 'bogus' is not allowed"),
    train("misspelt optimizer", "trainer.optim=adamw_9bit",
          line="error: trainer.optim: 'adamw_9bit' is not allowed. Did you mean 'adamw_8bit'?"),
    train("negative val_size", "data.val_size=-0.1", line="error: data.val_size: -0.1 is out of range"),
    train("format not offered", "data.format=csv", line="error: data.format: 'csv' is not allowed"),
    train("overlength policy unknown", "data.overlength=cut", line="error: data.overlength: 'cut' is not allowed"),
    train("loss_on unknown", "data.loss_on=everything", line="error: data.loss_on: 'everything' is not allowed"),
    train("max_length negative", "data.max_length=-1", line="error: data.max_length: -1 is out of range"),
    train("max_samples zero", "data.max_samples=0", line="error: data.max_samples: 0 is out of range"),
    train("max_seq_length zero", "model.max_seq_length=0", line="error: model.max_seq_length: 0 is out of range"),
    train("dtype unknown", "model.dtype=float8", line="error: model.dtype: 'float8' is not allowed"),
    train("bits unknown", "quantization.bits=3", line="error: quantization.bits: '3' is not allowed"),
    train("quant type unknown", "quantization.quant_type=int4",
          line="error: quantization.quant_type: 'int4' is not allowed. Did you mean 'nf4'?"),
    train("bias unknown", "lora.bias=some", line="error: lora.bias: 'some' is not allowed"),
    train("backend unknown", "backend=vllm", line="error: backend: 'vllm' is not allowed"),
    train("init weights loftq", "lora.init_weights=loftq",
          line="error: lora.init_weights: 'loftq' is not allowed"),
    train("ddp in one process (e.g. accelerate launch --cpu)", "distributed=ddp",
          line="error: distributed: ddp needs several processes and this is one"),
    train("several processes, a mistake in the config", "distributed.processes=2", "lora.r=0",
          line="error: lora.r: 0 is out of range"),  # checked once, before any process starts
    data("several processes, a mistake in the data", '{"messages": [{"role": "user", "content": "hi"}, '
         '{"role": "assistant", "content": 5}]}\n', "distributed.processes=2",
         line="error: data.source: sample 0 has an assistant message whose content is a number"),  # rank 0 says it
    train("several processes in a sweep", "distributed.processes=2", "lora.r=4,8", multirun=True, lines=3,
          line="2 job(s) failed:"),
    train("fsdp on CPU", "distributed=fsdp", "backend=hf",
          line="error: distributed: fsdp shards over CUDA GPUs and this machine has none"),
    train("init weights refused by Unsloth on CPU", "lora.init_weights=pissa",
          line="error: lora.init_weights: 'pissa' is refused by Unsloth's CPU backend"),
    train("full training of a projection on Unsloth", "lora.modules_to_save=[q_proj]",
          line="error: lora.modules_to_save: 'q_proj' cannot be trained in full by Unsloth"),
    train("pre-quantized repo with other settings", "model.name=unsloth/Llama-3.2-1B-bnb-4bit", "quantization=int8",
          line="error: quantization: model.name 'unsloth/Llama-3.2-1B-bnb-4bit' is already quantized"),
    train("name with a path in it", "name=/../../x", line="error: name: /../../x is out of range"),
    train("name with a space", "name=my run", line="error: name: my run is out of range"),
    train("online logging without a key", "logger=wandb", "logger.mode=online",
          line="error: logger.mode: online needs W&B credentials"),
    train("logger mode unknown", "logger=wandb", "logger.mode=loud", line="error: logger.mode: 'loud' is not allowed"),
    # --- config groups ----------------------------------------------------------------------------------------------
    train("group option misspelt", "quantization=nf5",
          line="error: quantization: unknown option 'nf5'. Did you mean 'nf4'?"),
    train("group given a number", "model=5", line="error: model: 5 is not an option name"),
    train("data group given a number", "data=1.5", line="error: data: 1.5 is not an option name"),
    train("target preset unknown", "lora/target_modules=attn", line="error: lora/target_modules: unknown option"),
    train("experiment unknown", "experiment=nosuch", line="error: experiment: unknown option 'nosuch'"),
    train("model preset unknown", "model=nosuch", line="error: model: unknown option 'nosuch'"),
    train("logger unknown", "logger=nosuch", line="error: logger: unknown option 'nosuch'"),
    # --- where the run goes ---------------------------------------------------------------------------------------
    train("run dir under /proc", "hydra.run.dir=/proc/x",
          line="error: hydra.run.dir: cannot create /proc/x: No such file or directory"),
    train("run dir on a read-only disk", line="error: hydra.run.dir: cannot create {run}: Read-only file "
          "system", setup="ro"),
    train("run dir where a file is", "hydra.run.dir={tmp}/a-file/run", line="error: hydra.run.dir: cannot create",
          files=(("a-file", b"x"),)),
    train("resume a folder that is no run", "resume={tmp}/nothing-here",
          line="error: resume: {tmp}/nothing-here is not a run directory"),
    train("a completed run is not overwritten", line="error: hydra.run.dir: {run} already holds a completed run",
          setup="completed", leaves=("summary.json",), status="completed"),
    train("a run directory in use", line="error: hydra.run.dir: {run} is in use by a running training",
          setup="locked", leaves=(".lock",)),
    train("a folder of the user's own files", "hydra.run.dir={tmp}/mine",
          line="error: hydra.run.dir: {tmp}/mine holds files that are not a run's (metrics.jsonl, notes.txt)",
          files=(("mine/notes.txt", b"my notes\n"), ("mine/metrics.jsonl", b'{"mine": 1}\n'))),
    train("resume into a folder of the user's own files", "hydra.run.dir={tmp}/mine", "resume=auto",
          line="error: hydra.run.dir: {tmp}/mine holds files that are not a run's (notes.txt)",
          files=(("mine/notes.txt", b"my notes\n"),)),
    train("resume with another LoRA shape", "resume=auto", "lora.r=8",
          line="error: resume: the config differs from the run's in lora.r (16 -> 8)",
          setup="resumable", leaves=("config.resolved.yaml", "summary.json"), status="interrupted"),
    # --- data: the file itself ---------------------------------------------------------------------------------------
    train("data file missing", "data.source=missing/file.jsonl",
          line="error: data.source: file not found: missing/file.jsonl"),
    train("eval file missing", "data.val_size=0", "data.eval_source={tmp}/nope.jsonl",
          line="error: data.eval_source: file not found: {tmp}/nope.jsonl"),
    train("lm-eval asked of train", "eval.lm_eval_tasks=[hellaswag]",
          line="error: eval.lm_eval_tasks: lm-evaluation-harness runs on a merged export, not during train"),
    train("before/after evaluation with nothing held out", "data.val_size=0", "eval.before_after=true",
          line="error: eval.before_after: needs a held-out split, and data.val_size is 0"),
    data("malformed JSONL line", MESSAGES_ROW + '{"messages": [oops\n',
         line="error: data.source: {tmp}/data.jsonl:2: not valid JSON"),
    data("JSONL line not an object", "[1, 2]\n", line="error: data.source: {tmp}/data.jsonl:1: a JSONL line must be"),
    data("bytes that are not UTF-8", b'{"messages": [{"role": "user", "content": "h\xff\xfei"}]}\n',
         line="error: data.source: {tmp}/data.jsonl:1: not UTF-8 text"),
    data("empty file", "", line="error: data.source: the dataset is empty"),
    data("blank lines only", "\n\n", line="error: data.source: the dataset is empty"),
    data("file type not read", "<x/>", file="data.xml", line="error: data.source: cannot read {tmp}/data.xml"),
    train("glob matching nothing", "data.source={tmp}/none-*.jsonl", line="error: data.source: no data files match"),
    train("folder without data files", "data.source={tmp}/sub", files=(("sub/notes.md", b"x"),),
          line="error: data.source: no data files match {tmp}/sub"),
    data("CSV that cannot be parsed", 'a,b\n"1,2\n', file="data.csv", line="error: data.source: cannot parse"),
    train("sources with different columns", "data.source=[{tmp}/a.jsonl,{tmp}/b.jsonl]",
          files=(("a.jsonl", MESSAGES_ROW.encode()), ("b.jsonl", b'{"text": "x"}\n')),
          line="error: data.source: {tmp}/b.jsonl has columns ['text'] but {tmp}/a.jsonl has"),
    # --- data: rows and columns ------------------------------------------------------------------------------------
    data("messages given as a string", '{"messages": "hello"}\n',
         line="error: data.source: sample 0: 'messages' is a str, not a list of messages"),
    data("messages holding numbers", '{"messages": [1, 2]}\n',
         line="error: data.source: sample 0: 'messages' is a list of int, not a list of messages"),
    data("columns of no known format", '{"foo": 1}\n', line="error: data.format: cannot tell the format from"),
    data("role not known", '{"messages": [{"role": "bot", "content": "x"}]}\n',
         line="error: data.source: sample 0 has a message with role 'bot'"),
    data("message without content", '{"messages": [{"role": "user", "content": null}]}\n',
         line="error: data.source: sample 0 has a user message with no content"),
    data("conversation with no turns", '{"messages": []}\n' + MESSAGES_ROW,
         line="error: data.source: sample 0 has no 'messages'"),
    data("preference data (chosen/rejected) under sft", '{"prompt": "q", "chosen": "good", "rejected": "bad"}\n',
         line="error: data.source: its columns ['chosen', 'prompt', 'rejected'] hold preference pairs (chosen/"
              "rejected), which method=sft would train as plain answers. Train them with method=dpo (or orpo, "
              "simpo, kto)."),
    data("LLaMA-Factory ranking data under sft", '{"conversations": [{"from": "human", "value": "q"}], "chosen": '
         '{"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}\n',
         line="error: data.source: its columns ['chosen', 'conversations', 'rejected'] hold preference pairs"),
    data("KTO data (label) under sft", '{"prompt": "q", "completion": "a", "label": false}\n',
         line="error: data.source: its columns ['completion', 'label', 'prompt'] hold answers labelled desirable or "
              "not ('label'), and method=sft would train the undesirable ones too. Train them with method=kto."),
    data("LLaMA-Factory KTO data under sft", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
         '"content": "a"}], "label": true}\n',
         line="error: data.source: its columns ['label', 'messages'] hold answers labelled desirable or not"),
    data("labelled answers under dpo", '{"prompt": "q", "completion": "a", "label": false}\n', "method=dpo",
         line="error: data.source: method=dpo trains on pairs of answers, and its columns ['completion', 'label', "
              "'prompt'] hold answers labelled one by one ('label'). Train them with method=kto"),
    data("SFT data under dpo", MESSAGES_ROW, "method=dpo",
         line="error: data.source: method=dpo needs TRL's prompt, chosen and rejected"),
    data("SFT data under kto", MESSAGES_ROW, "method=kto",
         line="error: data.source: method=kto needs TRL's prompt, completion and label, or LLaMA-Factory's messages "
              "(or conversations) with label; its columns ['messages'] hold SFT data"),
    data("a KTO label that is not true or false", '{"prompt": "q", "completion": "a", "label": "high"}\n',
         "method=kto", line="error: data.source: sample 0: its label 'high' is not true or false"),
    data("plain and conversational pairs mixed", '{"prompt": "q", "chosen": "a", "rejected": "b"}\n'
         '{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}], '
         '"rejected": [{"role": "assistant", "content": "b"}]}\n', "method=dpo",
         line="error: data.source: sample 1 is a conversation where sample 0 is plain text"),
    train("a method's field under another method", "method=dpo", "method.simpo_gamma=1",
          line="error: method.simpo_gamma: method=dpo does not use it (it is read by method=simpo). Remove it, or "
               "choose method=simpo."),
    train("a loss the method does not have", "method=dpo", "method.loss_type=sigmod",
          line="error: method.loss_type: 'sigmod' is not a loss of method=dpo. Did you mean 'sigmoid'?"),
    train("KTO with batches of one", "method=kto", "trainer.per_device_train_batch_size=1",
          line="error: trainer.per_device_train_batch_size: 1: KTO estimates its KL term"),
    train("packing under a preference method", "method=orpo", "data.packing=true",
          line="error: data.packing: packs SFT samples; method=orpo trains on whole prompt/answer pairs"),
    train("init_from pointing nowhere", "method=dpo", "init_from={tmp}/nowhere",
          line="error: init_from: {tmp}/nowhere holds no adapter (adapter_config.json and adapter_model.safetensors "
               "missing from {tmp}/nowhere). Point it at a completed run's directory, or at one of its checkpoints."),
    train("truncation ORPO cannot do", "method=orpo", "eval.before_after=false",
          f"data.source={REPO / 'assets/data/tiny_dpo.jsonl'}", "data.format=auto",
          "data.overlength=truncate",
          line="error: data.overlength: truncate: TRL's trainer for method=orpo cannot cut a pair to length"),
    data("image data", '{"messages": [{"role": "user", "content": "what?"}], "images": ["cat.png"]}\n',
         line="error: data.source: its columns ['images', 'messages'] hold multimodal data (column 'images')"),
    data("tool call with arguments that are not JSON", MESSAGES_ROW + '{"messages": [{"role": "user", "content": "q"}, '
         '{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", '
         '"arguments": "{city: Paris}"}}]}, {"role": "tool", "content": "r"}, '
         '{"role": "assistant", "content": "a"}]}\n',
         line="error: data.source: sample 1: a tool call's arguments is not valid JSON"),
    train("tool calls with a template that drops them", "experiment=quickstart_tools", "backend=hf",
          "model.chat_template=phi-3", line="error: model.chat_template: the chat template 'phi-3' cannot render "
          "tool-calling data: it drops the tool definitions (tools=), the assistant's tool calls and tool results"),
    data("no conversation has an answer", '{"messages": [{"role": "user", "content": "a question"}]}\n',
         "data.val_size=0", line="error: data.source: none of its 1 conversations has an assistant answer"),
    data("alpaca with an empty output", '{"instruction": "a", "output": ""}\n',
         line="error: data.source: sample 0 has an empty 'output'"),
    data("CSV with a gap", "instruction,output\na,\n", file="data.csv",
         line="error: data.source: sample 0 has an empty 'output'"),
    # types are checked where the data comes in: a list is never trained as its repr, "false" never as true
    data("alpaca output is a list", '{"instruction": "a", "output": ["x.", "y."]}\n',
         line="error: data.source: sample 0: 'output' is a list, not text"),
    data("alpaca input is an object", '{"instruction": "a", "input": {"k": 1}, "output": "x"}\n',
         line="error: data.source: sample 0: 'input' is an object, not text"),
    data("text is a list", '{"text": ["a line", "another"]}\n',
         line="error: data.source: sample 0: 'text' is a list, not text"),
    data("prompt is a number", '{"prompt": 7, "completion": "x"}\n',
         line="error: data.source: sample 0: 'prompt' is a number, not text or a list of messages"),
    data("message content is a number",
         '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]}\n',
         line="error: data.source: sample 0 has an assistant message whose content is a number, not text"),
    data("sharegpt answer is a list", '{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", '
         '"value": ["a.", "b."]}]}\n', line="error: data.source: sample 0 has an assistant message whose content is a "
         "list holding text, not text or text parts"),
    data("train flag that is no boolean",
         '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", '
         '"train": "maybe"}]}\n',
         line="error: data.source: sample 0: an assistant message's 'train' is 'maybe', not true or false"),
    data("loss weight that is no number",
         '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", '
         '"loss_weight": "high"}]}\n',
         line="error: data.source: sample 0: an assistant message's 'loss_weight' is 'high', not a number"),
    data("empty assistant answer",
         MESSAGES_ROW + '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}\n',
         line="error: data.source: sample 1 has an empty assistant message (nothing to learn)"),
    data("empty assistant answers, many", (MESSAGES_ROW + '{"messages": [{"role": "user", "content": "hi"}, '
         '{"role": "assistant", "content": " "}]}\n') * 40,
         line="error: data.source: sample 1 has an empty assistant message (nothing to learn); 40 of 80 samples have "
              "one. Write each answer, or remove those samples."),
    train("a folder of several data kinds", "data.source={tmp}/folder",
          line="error: data.source: {tmp}/folder holds data files of several kinds (json: data.jsonl, text: notes.txt)",
          files=(("folder/data.jsonl", MESSAGES_ROW.encode()), ("folder/notes.txt", b"some notes\n"))),
    data("CSV with a column twice", "instruction,output,output\na,b,c\n", file="data.csv",
         line="error: data.source: {tmp}/data.csv has the column 'output' twice"),
    data("sharegpt speaker unknown", '{"conversations": [{"from": "robot", "value": "x"}]}\n',
         line="error: data.format: sample 0: a conversation turn has role 'robot'"),
    data("format forced against the columns", MESSAGES_ROW, "data.format=alpaca",
         line="error: data.format: format 'alpaca' needs columns ['instruction', 'output']"),
    data("column map names a missing column", MESSAGES_ROW, "data.columns={messages: nosuch}",
         line="error: data.columns.messages: column 'nosuch' is not in {tmp}/data.jsonl"),
    train("eval data with other columns", "data.val_size=0", "data.eval_source={tmp}/eval.jsonl",
          files=(("eval.jsonl", b'{"text": "x"}\n'),),
          line="error: data.format: format 'messages' needs columns ['messages']"),
    train("eval data malformed", "data.val_size=0", "data.eval_source={tmp}/eval.jsonl",
          files=(("eval.jsonl", b'{"messages": [oops\n'),), line="error: data.eval_source: {tmp}/eval.jsonl:1: not"),
    train("eval data empty", "data.val_size=0", "data.eval_source={tmp}/eval.jsonl", files=(("eval.jsonl", b""),),
          line="error: data.eval_source: the dataset is empty"),
    train("val_size takes every sample", "data.val_size=100", line="error: data.val_size: 100.0 leaves no training"),
    train("sample over the limit with overlength=raise", "data.max_length=16", "data.overlength=raise",
          line="error: data.overlength: 72 train samples are longer than 16 tokens"),
    train("effective batch above the data", "trainer.gradient_accumulation_steps=20",
          line="error: trainer.gradient_accumulation_steps: an effective batch of 4 x 20 is larger than the 72"),
    # --- the model -------------------------------------------------------------------------------------------------
    train("hub model offline", "model.name=no-such-org/no-such-model",
          line="error: model.name: cannot load 'no-such-org/no-such-model'"),
    train("local model folder missing", "model.name=/no/such/model",
          line="error: model.name: no such local folder: /no/such/model"),
    train("hub dataset offline", "data.source=no-such-org/no-such-dataset",
          line="error: data.source: cannot load hub dataset"),
    train("rank wider than a layer", "lora.r=33",
          line="error: lora.r: 33 is larger than the narrowest adapted layer (32 wide)"),
    train("target module the model lacks", "lora.target_modules=[q_proj,foo_proj]",
          line="error: lora.target_modules: 'foo_proj' matches no linear layer of this model"),
    train("hf backend: target module the model lacks", "backend=hf", "lora.target_modules=[nope_proj]",
          line="error: lora.target_modules: 'nope_proj' matches no linear layer"),
    # --- the environment ------------------------------------------------------------------------------------------
    train("WANDB_MODE not a mode", "logger=wandb", env=(("WANDB_MODE", "bogus"),),
          line="error: WANDB_MODE: 'bogus' is not a W&B mode"),
    train("hub unreachable, not offline", "model.name=no-such-org/no-such-model",
          env=(("HF_HUB_OFFLINE", None), ("HF_DATASETS_OFFLINE", None), ("TRANSFORMERS_OFFLINE", None),
               ("HF_ENDPOINT", "https://hub.invalid")),
          line="error: model.name: cannot load 'no-such-org/no-such-model'",
          says="the hub (hub.invalid) cannot be reached"),  # probed once: no minute of retries first
    # --- the other commands ---------------------------------------------------------------------------------------
    Case("plan: rank zero", ("lora.r=0",), "error: lora.r: 0 is out of range", command="pipeline.plan"),
    Case("plan: unknown key", ("lora.rank=8",), "error: lora.rank: unknown key", command="pipeline.plan"),
    Case("plan: model unknown", ("model=nosuch",), "error: model: unknown option 'nosuch'", command="pipeline.plan"),
    Case("plan: target module missing", ("model=phi3_mini", "lora.target_modules=[q_proj,foo_proj]"),
         "error: lora.target_modules: 'q_proj' matches no linear layer of this model (its linear layers: down_proj, "
         "gate_up_proj, lm_head, o_proj, qkv_proj). Closest: 'qkv_proj'.", command="pipeline.plan"),
    Case("plan: group given a number", ("model=7",), "error: model: 7 is not an option name", command="pipeline.plan"),
    Case("plan: unparsable override", ("lora.target_modules=[q",), "error: lora.target_modules: cannot parse",
         command="pipeline.plan"),
    Case("plan: local model missing", ("model.name=/no/such",), "error: model.name: no such local folder: /no/such",
         command="pipeline.plan"),
    Case("preprocess: unknown key", ("lora.rank=8",), "error: lora.rank: unknown key", command="pipeline.preprocess"),
    Case("preprocess: data file missing", ("data.source=/no/such.jsonl",),
         "error: data.source: file not found: /no/such.jsonl", command="pipeline.preprocess"),
    Case("preprocess: malformed JSONL", ("data.source={tmp}/data.jsonl",),
         "error: data.source: {tmp}/data.jsonl:1: not valid JSON", command="pipeline.preprocess",
         files=(("data.jsonl", b"{oops\n"),)),
    Case("preprocess: model missing", ("model.name=/no/such",), "error: model.name: no such local folder",
         command="pipeline.preprocess"),
    Case("preprocess: overlength raise", ("data.max_length=16", "data.overlength=raise"),
         "error: data.overlength: 72 train samples are longer", command="pipeline.preprocess"),
    Case("export: no run given", (), "error: run: no run directory given", command="pipeline.export"),
    Case("export: not a run directory", ("run={tmp}/elsewhere",), "error: run: {tmp}/elsewhere is not a run directory",
         command="pipeline.export"),
    Case("export: a run that did not complete", ("run={run}",), "error: run: {run} holds no completed run (status: "
         "interrupted)", command="pipeline.export", setup="resumable", leaves=("summary.json",), status="interrupted"),
    Case("export: a file for the run", ("run={tmp}/a-file",), "error: run: {tmp}/a-file is a file, not a run "
         "directory", command="pipeline.export", files=(("a-file", b"x"),)),
    Case("export: a training setting", ("run={run}", "lora.r=8"), "error: lora: unknown key. 'lora' is a training "
         "setting; this command works on a trained run", command="pipeline.export"),
    Case("export: format unknown", ("run={run}", "export.format=onnx"), "error: export.format: 'onnx' is not allowed",
         command="pipeline.export"),
    Case("export: dtype unknown", ("run={run}", "export.dtype=int4"), "error: export.dtype: 'int4' is not allowed",
         command="pipeline.export"),
    Case("generate: no run given", ("prompt=hi",), "error: run: no run directory given", command="pipeline.generate"),
    Case("generate: negative temperature", ("run={run}", "generate.temperature=-1"),
         "error: generate.temperature: -1.0 is out of range", command="pipeline.generate"),
    Case("generate: top_p zero", ("run={run}", "generate.top_p=0"), "error: generate.top_p: 0.0 is out of range",
         command="pipeline.generate"),
    Case("generate: source unknown", ("run={run}", "generate.source=gguf"),
         "error: generate.source: 'gguf' is not allowed", command="pipeline.generate"),
    Case("evaluate: no run given", (), "error: run: no run directory given", command="pipeline.evaluate"),
    Case("evaluate: zero samples", ("run={run}", "eval.samples=0"), "error: eval.samples: 0 is out of range",
         command="pipeline.evaluate"),
    Case("summarize: no sweep directory given", (), "error: the following arguments are required: sweep_dir. See "
         "python -m pipeline.summarize --help.", command="pipeline.summarize"),
    Case("summarize: a job with a damaged summary", ("{tmp}/sweep",), "job 0: {tmp}/sweep/0/summary.json is damaged",
         command="pipeline.summarize", exit=0, files=(("sweep/0/summary.json", b'{"status": "compl'),)),
    # --- a finished run, damaged or gone: one line naming the file and what to do ------------------------------------
    Case("export: adapter_config.json cut short", ("run={run}",),
         "error: run: {run}/adapter/adapter_config.json is damaged (not valid JSON", command="pipeline.export",
         setup="finished", damage="adapter config cut", ends=RESTORE),
    Case("export: adapter weights deleted", ("run={run}",), "error: run: {run}/adapter/adapter_model.safetensors is "
         "missing: the run's adapter has no weights. Restore it from a copy, or train the run again.",
         command="pipeline.export", setup="finished", damage="weights deleted"),
    Case("export: adapter weights cut short", ("run={run}",),
         "error: run: {run}/adapter/adapter_model.safetensors is damaged", command="pipeline.export", setup="finished",
         damage="weights cut", ends=RESTORE),
    Case("export: summary.json cut short", ("run={run}",), "error: run: {run}/summary.json is damaged (not valid JSON",
         command="pipeline.export", setup="finished", damage="summary cut", ends=RESTORE),
    Case("export: summary.json binary", ("run={run}",), "error: run: {run}/summary.json is damaged (not valid JSON",
         command="pipeline.export", setup="finished", damage="summary binary", ends=RESTORE),
    Case("export: config.resolved.yaml not YAML", ("run={run}",), "error: run: {run}/config.resolved.yaml is damaged",
         command="pipeline.export", setup="finished", damage="config not YAML", ends=RESTORE),
    Case("export: the base model gone", ("run={run}",), "error: run: the run's base model /no/such/model is not there "
         "(model.name in {run}/config.resolved.yaml). Put the base model back there, or correct model.name in that "
         "file.", command="pipeline.export", setup="finished", damage="base model gone"),
    Case("generate: adapter shapes edited", ("run={run}", "prompt=hi"),
         "error: run: {run}/adapter does not fit the base ", command="pipeline.generate", setup="finished",
         damage="shapes edited"),
    Case("generate: a binary prompts file", ("run={run}", "prompts_file={tmp}/prompts.bin"),
         "error: prompts_file: {tmp}/prompts.bin is not UTF-8 text (invalid start byte at byte 0). Give a text file "
         "with one prompt per line.", command="pipeline.generate", setup="finished",
         files=(("prompts.bin", b"\x89PNG\r\n\x1a\n\xff\xfe"),)),
    Case("generate: the merged export deleted", ("run={run}", "generate.source=merged_16bit", "prompt=hi"),
         "error: generate.source: there is no merged export in {run}/export/merged_16bit. Write it first: "
         "python -m pipeline.export run={run}.", command="pipeline.generate", setup="finished"),
    Case("export: a full disk", ("run={run}",), "error: export: cannot write to {run}: ", command="pipeline.export",
         setup="finished+tmpfs:400k", exit=1),  # room for the run, not for the merged model: nothing kept
    Case("export: Ctrl-C", ("run={run}",), "interrupted: stopped at once; nothing half-written was kept",
         command="pipeline.export", setup="finished+sigint", exit=130),
    train("train into a folder whose summary.json is damaged",
          line="error: hydra.run.dir: {run}/summary.json is damaged", files=(("run/summary.json", b'{"status": "ru'),),
          leaves=("summary.json",)),
    train("resume on data changed since the run started", "resume=auto",
          line="error: resume: the data changed since this run started (its files are not the ones it trained on)",
          setup="resumable", leaves=("config.resolved.yaml", "summary.json"), status="interrupted"),
    # --- sweeps ----------------------------------------------------------------------------------------------------
    train("sweep: every failed job listed", "lora.r=0,33", line="2 job(s) failed:", lines=3, multirun=True),
    train("sweep: data errors in every job", "data.source={tmp}/a.jsonl,{tmp}/b.jsonl",
          line="2 job(s) failed:", lines=3, multirun=True),
    train("sweep dir under /proc", "lora.r=2,4", "hydra.sweep.dir=/proc/y",
          line="error: hydra.sweep.dir: cannot create /proc/y", multirun=True),
    # --- signals and faults during a run ---------------------------------------------------------------------------
    train("SIGTERM during set-up", "trainer.max_steps=400", line="interrupted: SIGTERM outside the training loop",
          exit=143, setup="sigterm"),
    train("Ctrl-C during set-up", "trainer.max_steps=400", line="interrupted: stopped at once", exit=130,
          setup="sigint"),
    train("disk full during training", line="error: hydra.run.dir: cannot write to {run}: no space left on device",
          exit=1, setup="tmpfs:800k", status="failed",
          leaves=("summary.json", "config.resolved.yaml", "checkpoints", "metrics.jsonl")),
    train("a disk too small to start on", line="error: hydra.run.dir: cannot write to {run}: No space left on device",
          exit=1, setup="tmpfs:16k"),
    # --- settings this machine cannot run: replaced, said, recorded ------------------------------------------------
    train("fp16 and an 8-bit optimizer on CPU", "model.dtype=float16", "trainer.optim=adamw_8bit",
          "trainer.max_steps=4", exit=0, lines=-1, status="completed", line="note: model.dtype=float16",
          says="note: trainer.optim=adamw_8bit", leaves=("summary.json", "adapter"),
          summary=(("precision", "float32"),)),  # fp16 on CPU ended in NaN before
    train("W&B key with no network", "logger=wandb", "trainer.max_steps=4", exit=0, lines=-1, status="completed",
          env=(("WANDB_API_KEY", "x" * 40), ("WANDB_BASE_URL", "https://api.wandb.invalid"),
               ("WANDB_INIT_TIMEOUT", "3")),
          line="W&B: ", leaves=("summary.json", "adapter")),
]


def test_the_catalog_has_at_least_100_cases() -> None:
    assert len(CASES) >= 100
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_catalog(case: Case, tmp_path: Path, home: Path, request: pytest.FixtureRequest) -> None:
    # the run directory on a filesystem of its own
    own_disk = bool({"tmpfs", "ro"} & {part.split(":")[0] for part in setups(case)})
    run_dir = tmp_path / "disk" / "run" if own_disk else tmp_path / "run"
    def fill(text: str) -> str:  # not str.format: overrides hold ${...} of their own
        return text.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir))

    for name, content in case.files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    args = [fill(arg) for arg in case.args]
    if case.multirun:
        args = ["-m", *args] + ([] if any(a.startswith("hydra.sweep.dir=") for a in args) else
                                [f"hydra.sweep.dir={run_dir}"])
    elif not any(a.startswith("hydra.run.dir=") for a in args) and case.command not in NOT_HYDRA:
        args.append(f"hydra.run.dir={run_dir}")
    env = offline_env(home)
    for key, value in case.env:
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    expected = fill(case.line)
    finished = request.getfixturevalue("finished_run") if "finished" in setups(case) else None
    result, run_dir = run_with_setup(case, [sys.executable, "-m", case.command, *args], env, tmp_path, run_dir,
                                     finished)
    stderr, stdout = result.stderr, result.stdout

    assert result.returncode == case.exit, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    assert case.says in stdout
    if case.exit == 0:
        assert any(expected in line for line in stdout.splitlines()), stdout[-3000:]
    else:
        lines = [line for line in re.split(r"[\r\n]", stderr) if not PROGRESS_BAR.search(line)]
        assert len(lines) == case.lines, stderr[-3000:]
        assert lines[0 if case.lines == 1 else -case.lines].startswith(expected), lines
        assert lines[0].endswith(fill(case.ends)), lines
        if case.lines > 1:  # a sweep: each failed job has its own error line
            assert all(" error: " in line for line in lines[-case.lines + 1:]), lines
        if not any(part.startswith(("tmpfs", "sig")) for part in setups(case)):
            chatter = [line for line in stdout.splitlines() if line.strip() and not OUR_LOG_LINE.match(line)]
            assert chatter == [], chatter  # libraries log to the run's log file, not the terminal
    check_left_on_disk(case, run_dir)


def check_left_on_disk(case: Case, run_dir: Path) -> None:
    if case.multirun:
        assert not any(run_dir.glob("*/summary.json"))  # no job got far enough to look like a run
        return
    if "finished" in setups(case):  # a command on a finished run: the run is left as it was, and no export half-made
        present = {p.name for p in run_dir.iterdir()}
        assert {"summary.json", "adapter", "config.resolved.yaml"} <= present and "export" not in present, present
        return
    if {"sigterm", "sigint"} & setups(case):  # where the signal lands in set-up decides what was written
        summary = run_dir / "summary.json"
        assert not summary.exists() or json.loads(summary.read_text())["status"] == "interrupted"
        assert not (run_dir / "adapter").exists()
        return
    if not case.leaves:
        assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(p.name for p in run_dir.iterdir())
        return
    present = {p.name for p in run_dir.iterdir()}
    assert set(case.leaves) <= present, present
    if case.setup in ("completed", "locked", "resumable"):
        assert ".hydra" not in present  # a refused run writes no record of itself into another run's directory
    assert not any(name.endswith(".tmp") for name in present), present
    if case.status:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == case.status
        assert all(summary[key] == value for key, value in case.summary), summary
        if case.status == "completed" and case.exit == 0:
            assert summary["final_loss"] == summary["final_loss"]  # finite: not NaN
            printed = [line.removeprefix("note: ") for line in (case.line, case.says) if line.startswith("note: ")]
            for note in printed:  # what the run said is recorded too
                assert any(recorded.startswith(note) for recorded in summary["notes"]), summary["notes"]
        if case.status == "failed":
            assert summary["error"].startswith(case.line.replace("{run}", summary["run_dir"]))
            assert "adapter" not in present
            assert all((p / "trainer_state.json").is_file() for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def setups(case: Case) -> set[str]:
    return set((case.setup or "").split("+")) - {""}


def run_with_setup(case: Case, command: list[str], env: dict, tmp_path: Path, run_dir: Path,
                   finished: Path | None) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `command` after building what the case needs: a run directory in some state (a copy of a finished run,
    damaged as the case says), a small or read-only disk, a signal during set-up."""
    parts = setups(case)
    setup = next((part for part in parts if part != "finished"), "")
    if finished is not None and not setup.startswith("tmpfs"):
        copy_finished_run(finished, run_dir, case.damage)
    if setup == "completed":
        run_dir.mkdir()
        (run_dir / "summary.json").write_text('{"status": "completed"}\n')
    if setup == "resumable":
        write_interrupted_run(run_dir)
    if setup == "locked":
        run_dir.mkdir()
        holder = (run_dir / ".lock").open("a")
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running training holds it
    if setup in ("sigterm", "sigint"):
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(4 if finished else 3)  # inside set-up: composing, importing, preparing data, loading the base
        proc.send_signal(signal.SIGTERM if setup == "sigterm" else signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), run_dir
    if setup.startswith("tmpfs:") or setup == "ro":
        return run_on_own_filesystem(setup, command, env, run_dir, finished)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result, run_dir


def run_on_own_filesystem(setup: str, command: list[str], env: dict, run_dir: Path,
                          finished: Path | None) -> tuple[subprocess.CompletedProcess, Path]:
    """A tmpfs of its own (in a private mount namespace): small, to fill during training or an export, or read-only.
    A finished run is copied onto it first (without its checkpoints); what is left is copied out before the namespace
    ends."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs `unshare -m` (root) to mount a small filesystem")
    mount = run_dir.parent
    mount.mkdir()
    options = "size=1m,ro" if setup == "ro" else f"size={setup.split(':')[1]}"
    copy = mount.parent / "run-copy"
    fill = "" if finished is None else (  # the finished run, onto the small disk once it is mounted
        f"tar -C {finished} -cf - {' '.join(f'--exclude={name}' for name in FINISHED_LEFT_OUT)} . | "
        f"(mkdir {run_dir} && tar -C {run_dir} -xf -) && ")
    script = (f"mount -t tmpfs -o {options} tmpfs {mount} && {fill}{{ {shlex.join(command)}; rc=$?; "
              f"if [ -d {run_dir} ]; then cp -r {run_dir} {copy}; fi; exit $rc; }}")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    return result, copy


FINISHED_LEFT_OUT = ("checkpoints", "wandb", "export")  # what the commands on a finished run do not read


def copy_finished_run(finished: Path, run_dir: Path, damage: str | None) -> None:
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns(*FINISHED_LEFT_OUT))
    if damage is not None:
        DAMAGES[damage](run_dir)


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def widen_an_adapter_weight(run_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    weights_file = run_dir / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    name = next(k for k in weights if "lora_A" in k)
    weights[name] = torch.zeros(weights[name].shape[0] + 3, weights[name].shape[1])
    save_file(weights, weights_file)


def move_the_base_model(run_dir: Path) -> None:
    config = run_dir / "config.resolved.yaml"
    text = config.read_text()
    name = next(line for line in text.splitlines() if line.startswith("  name: "))
    config.write_text(text.replace(name, "  name: /no/such/model", 1))


DAMAGES = {  # what a run directory goes through: a copy cut short, a file deleted or edited by hand
    "adapter config cut": lambda run: cut_in_half(run / "adapter" / "adapter_config.json"),
    "weights deleted": lambda run: (run / "adapter" / "adapter_model.safetensors").unlink(),
    "weights cut": lambda run: (run / "adapter" / "adapter_model.safetensors").write_bytes(
        (run / "adapter" / "adapter_model.safetensors").read_bytes()[:100]),
    "summary cut": lambda run: (run / "summary.json").write_text('{"status": "compl'),
    "summary binary": lambda run: (run / "summary.json").write_bytes(b"\xff\xfe\x00binary"),
    "config not YAML": lambda run: (run / "config.resolved.yaml").write_text("model: {name: [unclosed\n"),
    "shapes edited": widen_an_adapter_weight,
    "base model gone": move_the_base_model,
}


def write_interrupted_run(run_dir: Path) -> None:
    """A run directory as an interrupted run leaves it: its resolved config (r=16) and summary."""
    from conftest import compose

    from pipeline.config import to_runconfig
    from pipeline.config.resolved import to_plain_dict
    from pipeline.outputs.rundir import write_resolved_config

    run_dir.mkdir()
    write_resolved_config(run_dir, to_plain_dict(to_runconfig(compose("experiment=quickstart", "logger=none"))))
    # the fingerprint of data other than the quickstart's: resuming on the quickstart's data is refused
    (run_dir / "summary.json").write_text('{"status": "interrupted", "data_fingerprint": "0123456789abcdef"}\n')
