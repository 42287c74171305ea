"""Data: formats, exact loss masks, length policy, cache, preprocess, and one-line errors for bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, compose, run_cli

from pipeline.config import to_runconfig
from pipeline.data import formats as data_lib
from pipeline.data import prepare
from pipeline.errors import ConfigError

DATA = REPO / "assets" / "data"
FORMATS = {"messages": "tiny_messages.jsonl", "alpaca": "tiny_alpaca.jsonl", "sharegpt": "tiny_sharegpt.jsonl",
           "prompt_completion": "tiny_prompt_completion.jsonl", "text": "tiny_text.jsonl"}


def prepared_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> tuple:
    from transformers import AutoTokenizer

    monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / "cache"))
    run = to_runconfig(compose("experiment=quickstart", "data.val_size=0", *overrides))
    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    return prepare.prepare(data_lib.build(run.data, tokenizer, run.seed), tokenizer, run), tokenizer


def trained_and_context(row: dict, tokenizer) -> tuple[str, str]:
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != prepare.IGNORE]
    context = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == prepare.IGNORE]
    return tokenizer.decode(trained), tokenizer.decode(context)


def first_row_with(prepared, tokenizer, text: str) -> dict:
    for row in prepared.train:
        if text in tokenizer.decode(row["input_ids"]):
            return row
    raise AssertionError(text)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_auto_detects_every_format(fmt: str) -> None:
    from datasets import load_dataset

    columns = load_dataset("json", data_files=str(DATA / FORMATS[fmt]), split="train").column_names
    assert data_lib.detect_format(columns) == fmt


def test_chat_mask_trains_exactly_the_assistant_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared, tok = prepared_for(tmp_path, monkeypatch)
    row = first_row_with(prepared, tok, "The young white duck sits under the tree.")
    trained, context = trained_and_context(row, tok)
    assert trained == "Animal: duck. Colour: white.<|im_end|>\n"  # the {% generation %} span: answer, end of turn
    assert context.endswith("<|im_start|>user\nName the animal and its colour.\nThe young white duck sits under the "
                            "tree.<|im_end|>\n<|im_start|>assistant\n")


def test_content_parts_train_exactly_what_plain_text_content_trains(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI-style `[{"type": "text", "text": ...}]` content: the parts joined by line breaks (the sample file holds
    tiny_messages.jsonl's rows with each user message in two parts)."""
    plain, tok = prepared_for(tmp_path / "plain", monkeypatch)
    parts, _ = prepared_for(tmp_path / "parts", monkeypatch, f"data.source={DATA / 'tiny_content_parts.jsonl'}")
    assert parts.train["input_ids"] == plain.train["input_ids"] and parts.train["labels"] == plain.train["labels"]
    trained, _ = trained_and_context(first_row_with(parts, tok, "The young white duck sits under the tree."), tok)
    assert trained == "Animal: duck. Colour: white.<|im_end|>\n"
    # LLaMA-Factory's v1 messages name the text `value`
    rows = [json.loads(line.replace('"text": "', '"value": "'))
            for line in (DATA / "tiny_content_parts.jsonl").read_text().splitlines()]
    values, _ = prepared_for(tmp_path / "values", monkeypatch, f"data.source={write_jsonl(tmp_path / 'v.jsonl', rows)}")
    assert values.train["input_ids"] == plain.train["input_ids"] and values.train["labels"] == plain.train["labels"]


def test_a_non_text_content_part_is_refused_naming_the_sample(tmp_path: Path) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]},
                          {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}]}]
    run = to_runconfig(compose("experiment=quickstart", f"data.source={write_jsonl(tmp_path / 'd.jsonl', rows)}"))
    with pytest.raises(ConfigError, match=r"data.source: sample 1 of column 'messages' has a 'image_url' content "
                                          r"part in a user message: this pipeline trains on text only"):
        data_lib.read(run.data)


def test_unused_columns_are_named_in_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"id": 1, "instruction": "a", "input": "", "output": "b", "source": "web"}] * 3
    run = to_runconfig(compose("experiment=quickstart", f"data.source={write_jsonl(tmp_path / 'd.jsonl', rows)}",
                               "data.format=auto"))
    assert data_lib.read(run.data).format == "alpaca"
    assert "data: columns ['id', 'source'] are not used: format alpaca reads ['history', 'input', 'instruction', " \
           "'output', 'system'] (map others with data.columns)" in caplog.messages


def test_per_turn_flags_choose_which_answers_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """axolotl's `train` and LLaMA-Factory's `loss_weight` per assistant message, on TRL's own mask."""
    def conversation(first: dict, second: dict) -> dict:
        return {"messages": [{"role": "user", "content": "Name the animal."}, {"role": "assistant", **first},
                             {"role": "user", "content": "And its colour?"}, {"role": "assistant", **second}]}

    rows = [conversation({"content": "Animal: fox.", "train": False}, {"content": "Colour: red."}),
            conversation({"content": "Animal: owl."}, {"content": "Colour: grey.", "loss_weight": 0}),
            conversation({"content": "Animal: cat."}, {"content": "Colour: black."})]
    source = write_jsonl(tmp_path / "flags.jsonl", rows * 4)
    prepared, tok = prepared_for(tmp_path, monkeypatch, f"data.source={source}")
    trained = {trained_and_context(first_row_with(prepared, tok, animal), tok)[0] for animal in ("fox", "owl", "cat")}
    assert trained == {"Colour: red.<|im_end|>\n", "Animal: owl.<|im_end|>\n",
                       "Animal: cat.<|im_end|>\nColour: black.<|im_end|>\n"}  # unflagged: both answers, as before
    # the data's own key for the flag, mapped by data.columns like a column
    renamed = write_jsonl(tmp_path / "renamed.jsonl", json.loads(json.dumps(rows * 4).replace('"train"', '"use"')))
    mapped, _ = prepared_for(tmp_path / "mapped", monkeypatch, f"data.source={renamed}", "data.columns={train: use}")
    assert mapped.train["labels"] == prepared.train["labels"]
    # written as strings ("false", "0"), the flags read as what they say, never by truthiness ("false" is truthy)
    spelled = json.dumps(rows * 4).replace('"train": false', '"train": "false"').replace('"loss_weight": 0',
                                                                                         '"loss_weight": "0"')
    assert '"train": "false"' in spelled and '"loss_weight": "0"' in spelled
    as_text, _ = prepared_for(tmp_path / "spelled", monkeypatch,
                              f"data.source={write_jsonl(tmp_path / 'spelled.jsonl', json.loads(spelled))}")
    assert as_text.train["labels"] == prepared.train["labels"]


@pytest.mark.parametrize(("flag", "trained"), [
    ({"train": True}, True), ({"train": False}, False), ({"train": "false"}, False), ({"train": "No"}, False),
    ({"train": " yes "}, True), ({"train": 0}, False), ({"train": 1}, True), ({"train": "1"}, True),
    ({"loss_weight": 0}, False), ({"loss_weight": "0"}, False), ({"loss_weight": 0.5}, True),
    ({"loss_weight": "2.5"}, True), ({}, True)])
def test_turn_flags_read_their_common_spellings(flag: dict, trained: bool) -> None:
    from pipeline.data.checks import turn_trained

    assert turn_trained({"role": "assistant", "content": "x", **flag}) is trained


@pytest.mark.parametrize("flag", [{"train": "maybe"}, {"train": 2}, {"train": []}, {"loss_weight": "high"},
                                  {"loss_weight": -1}, {"loss_weight": True}, {"loss_weight": "nan"}])
def test_turn_flags_that_say_nothing_clear_are_refused(flag: dict) -> None:
    from pipeline.data.checks import turn_trained

    with pytest.raises(ConfigError, match=r"^error: data.source: sample 3: an assistant message's "
                                          r"'(train|loss_weight)' is"):
        turn_trained({"role": "assistant", "content": "x", **flag}, "sample 3")


def tools_prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, *overrides: str) -> tuple:
    return prepared_for(tmp_path / name, monkeypatch, f"data.source={DATA / name}", "model.max_seq_length=512",
                        "data.format=auto", *overrides)


def test_tool_calls_train_and_tool_results_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The assistant's tool call and its answer carry the loss; the tools list, the question and the tool's result
    are context. Arguments sent as a JSON string (OpenAI's wire form) render as the same object."""
    prepared, tok = tools_prepared(tmp_path, monkeypatch, "tiny_tools.jsonl")
    as_object = first_row_with(prepared, tok, "A grey duck sits under the tree.")
    trained, context = trained_and_context(as_object, tok)
    assert trained == ('<tool_call>\n{"name": "look_up", "arguments": {"scene": "A grey duck sits under the tree."}}'
                       '\n</tool_call><|im_end|>\nAnimal: duck. Colour: grey.<|im_end|>\n')
    assert context == (
        '<|im_start|>system\n# Tools\n<tools>\n{"type": "function", "function": {"name": "look_up", "description": '
        '"The animal and colour of a scene.", "parameters": {"type": "object", "properties": {"scene": {"type": '
        '"string"}}, "required": ["scene"]}}}\n{"type": "function", "function": {"name": "count", "parameters": '
        '{"type": "object", "properties": {"unit": {"enum": ["words", "letters"]}}}}}\n</tools><|im_end|>\n'
        '<|im_start|>user\nName the animal and its colour.\nA grey duck sits under the tree.<|im_end|>\n'
        '<|im_start|>assistant\n<|im_start|>tool\n<tool_response>\n{"animal": "duck", "colour": "grey"}\n'
        '</tool_response><|im_end|>\n<|im_start|>assistant\n')  # no null keys from two tools' merged schemas
    as_string = trained_and_context(first_row_with(prepared, tok, "The young white duck sits under the tree."), tok)
    assert as_string[0].startswith('<tool_call>\n{"name": "look_up", "arguments": {"scene": "The young white duck')


def test_glaive_function_calls_train_like_openai_tool_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LLaMA-Factory's sharegpt form (function_call / observation turns, tools as a JSON string of bare function
    definitions) becomes exactly what the messages form gives: same tokens, same mask."""
    openai, _ = tools_prepared(tmp_path, monkeypatch, "tiny_tools.jsonl")
    glaive, _ = tools_prepared(tmp_path, monkeypatch, "tiny_tools_sharegpt.jsonl")
    assert glaive.train["input_ids"] == openai.train["input_ids"] and glaive.train["labels"] == openai.train["labels"]


def test_held_out_answers_are_asked_with_the_samples_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from pipeline.after.evaluate import question_and_answer

    run = to_runconfig(compose("experiment=quickstart_tools"))
    built = data_lib.build(run.data, AutoTokenizer.from_pretrained(run.model.name), run.seed)
    assert built.tools == ("tools", "calls", "results")
    messages, answer, tools = question_and_answer(next(row for row in built.eval if len(row["messages"]) == 4))
    assert [turn["role"] for turn in messages] == ["user", "assistant", "tool"] and answer.startswith("Animal: ")
    assert [tool["function"]["name"] for tool in tools][0] == "look_up"


def test_a_template_that_cannot_render_tools_is_named(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from pipeline.model.chat_templates import apply_named_chat_template

    run = to_runconfig(compose("experiment=quickstart_tools", "backend=hf", "model.chat_template=phi-3"))
    tokenizer = apply_named_chat_template(AutoTokenizer.from_pretrained(run.model.name), "phi-3", "hf")
    with pytest.raises(ConfigError, match=r"^error: model.chat_template: the chat template 'phi-3' cannot render "
                                          r"tool-calling data: it drops the tool definitions \(tools=\), the "
                                          r"assistant's tool calls and tool results\. Use a template that renders "):
        data_lib.build(run.data, tokenizer, run.seed, template="phi-3")


def test_tool_calls_train_without_marked_turns_as_with_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny template without its {% generation %} markers: every assistant turn, tool calls included, is read
    off the template (pipeline.data.turns) and trains exactly the tokens TRL's markers would."""
    from transformers import AutoTokenizer

    run = to_runconfig(compose("experiment=quickstart_tools"))
    marked = AutoTokenizer.from_pretrained(run.model.name)
    plain = AutoTokenizer.from_pretrained(run.model.name)
    plain.chat_template = marked.chat_template.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
    labels = {}
    for name, tokenizer in (("marked", marked), ("plain", plain)):
        monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / name))
        built = data_lib.build(run.data, tokenizer, run.seed)
        assert (built.assistant_only_loss, built.template_turns) == ((True, None) if name == "marked" else
                                                                     (False, "the tokenizer's own chat template"))
        labels[name] = prepare.prepare(built, tokenizer, run).train["labels"]
    assert labels["plain"] == labels["marked"]
    assert any(plain.decode([t for t in row if t != prepare.IGNORE]).count("<tool_call>") for row in labels["plain"])


@pytest.mark.parametrize(("call", "problem"), [
    ({"type": "function", "function": {"name": "look_up", "arguments": "{scene: duck}"}},
     "sample 1: a tool call's arguments is not valid JSON"),
    ({"type": "function", "function": {"arguments": {}}}, "sample 1: a tool call .* has no function name"),
])
def test_a_broken_tool_call_is_named(call: dict, problem: str, tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                        {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]}
    source = write_jsonl(tmp_path / "d.jsonl", [good, bad])
    run = to_runconfig(compose("experiment=quickstart", f"data.source={source}"))
    with pytest.raises(ConfigError, match=f"^error: data.source: {problem}"):
        data_lib.read(run.data)


def test_alpaca_mask_trains_exactly_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared, tok = prepared_for(tmp_path, monkeypatch, f"data.source={DATA / FORMATS['alpaca']}",
                                 "data.format=alpaca")
    row = first_row_with(prepared, tok, "Name the animal and its colour.\n\nA white fox sleeps under the tree.")
    trained, context = trained_and_context(row, tok)
    assert trained == "Animal: fox. Colour: white.<|im_end|>\n"  # completion = what follows the rendered prompt
    assert context == ("<|im_start|>user\nName the animal and its colour.\n\nA white fox sleeps under the tree."
                       "<|im_end|>\n<|im_start|>assistant\n")


def test_loss_on_all_trains_every_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared, _ = prepared_for(tmp_path, monkeypatch, "data.loss_on=all")
    assert all(all(label != prepare.IGNORE for label in row["labels"]) for row in prepared.train)


def test_length_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    dropped, _ = prepared_for(tmp_path, monkeypatch, "data.max_length=45", "data.overlength=drop")
    stats = dropped.stats["train"]
    assert stats.dropped_overlength == stats.overlength > 0 and stats.samples == 80 - stats.overlength
    share = round(100 * stats.overlength / 80)
    assert share > 10 and f"data: {stats.overlength} of 80 train samples ({share}%) dropped: {stats.overlength} " \
        "longer than 45 tokens, 0 with no trained token left; keep them with a larger data.max_length or " \
        "data.overlength=truncate" in caplog.messages  # loud when more than a tenth of a split goes
    assert all(len(row["input_ids"]) <= 45 for row in dropped.train)
    cut, _ = prepared_for(tmp_path, monkeypatch, "data.max_length=45", "data.overlength=truncate")
    assert cut.stats["train"].truncated == stats.overlength and all(len(r["input_ids"]) <= 45 for r in cut.train)
    with pytest.raises(ConfigError, match=r"data.overlength: \d+ train samples are longer than 45 tokens"):
        prepared_for(tmp_path, monkeypatch, "data.max_length=45", "data.overlength=raise")


def test_chunking_a_text_corpus_keeps_every_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .txt of documents (a sample per paragraph) at a limit most of them exceed: overlength=auto chunks text."""
    text = [f"data.source={DATA / 'tiny_documents.txt'}", "data.format=text"]
    whole, _ = prepared_for(tmp_path / "whole", monkeypatch, *text, "data.max_length=256")
    chunked, tok = prepared_for(tmp_path / "chunked", monkeypatch, *text, "data.max_length=16")
    long = [len(ids) for ids in whole.train["input_ids"] if len(ids) > 16]
    stats = chunked.stats["train"]
    assert stats.overlength == len(long) > 0 and stats.windows == sum(-(-n // 16) for n in long)
    assert stats.samples == len(whole.train) - len(long) + stats.windows and stats.dropped_overlength == 0
    assert sum(chunked.train["input_ids"], []) == sum(whole.train["input_ids"], [])  # every token, in order
    assert stats.trained_tokens == whole.stats["train"].trained_tokens == sum(len(r) for r in whole.train["input_ids"])
    assert all(len(ids) <= 16 for ids in chunked.train["input_ids"])
    assert "chunked into" in prepare.describe(stats)
    with pytest.raises(ConfigError, match=r"data.overlength: chunk splits text documents into windows, and this data "
                                          r"is messages"):
        prepared_for(tmp_path / "messages", monkeypatch, "data.overlength=chunk")


def test_cache_serves_the_second_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = prepared_for(tmp_path, monkeypatch)
    second, _ = prepared_for(tmp_path, monkeypatch)
    assert not first.from_cache and second.from_cache
    assert second.train["input_ids"] == first.train["input_ids"] and second.train["labels"] == first.train["labels"]
    changed, _ = prepared_for(tmp_path, monkeypatch, "data.loss_on=all")
    assert not changed.from_cache  # a different config is a different cache entry


@pytest.mark.e2e
def test_training_on_every_format(tmp_path: Path, home: Path) -> None:
    sweep = tmp_path / "sweep"
    # content parts; plain text, a sample per paragraph; tool calls as messages and as glaive's sharegpt
    extra = ["tiny_content_parts.jsonl", "tiny_documents.txt", "tiny_tools.jsonl", "tiny_tools_sharegpt.jsonl"]
    sources = ",".join(f"assets/data/{name}" for name in [*FORMATS.values(), *extra])
    result = run_cli("pipeline.train", "-m", "experiment=quickstart", f"data.source={sources}", "data.format=auto",
                     "data.val_size=0", "logger=none", "trainer.max_steps=6", "model.max_seq_length=512",
                     f"hydra.sweep.dir={sweep}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(len(FORMATS) + len(extra))]
    assert all(s["status"] == "completed" and s["final_loss"] < s["initial_loss"] for s in summaries)
    assert sorted(s["data_format"] for s in summaries) == sorted([*FORMATS, "messages", "text", "messages", "sharegpt"])
    assert [s["data_tools"] for s in summaries[-2:]] == [["tools", "calls", "results"]] * 2
    assert "format detected from columns" in result.stdout


@pytest.mark.e2e
def test_local_sources_in_every_form(tmp_path: Path) -> None:
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(DATA / FORMATS["alpaca"]), split="train")
    rows.to_csv(tmp_path / "a.csv")
    rows.to_parquet(tmp_path / "b.parquet")
    folder = tmp_path / "dir"
    folder.mkdir()
    rows.to_json(folder / "c.jsonl")
    for source, count in ((str(tmp_path / "a.csv"), 80), (str(tmp_path / "b.parquet"), 80), (str(folder), 80),
                          (str(tmp_path / "*.parquet"), 80), ([str(tmp_path / "a.csv"), str(folder)], 160)):
        run = to_runconfig(compose("experiment=quickstart", f"data.source={json.dumps(source)}"))
        assert len(data_lib.load_source(run.data)) == count, source


def test_column_mapping_and_a_separate_eval_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renamed = [{"question": "Say hi.", "answer": f"Hi {i}."} for i in range(5)]
    train = write_jsonl(tmp_path / "train.jsonl", renamed)
    held_out = write_jsonl(tmp_path / "eval.jsonl", renamed[:2])
    prepared, tok = prepared_for(tmp_path, monkeypatch, f"data.source={train}", f"data.eval_source={held_out}",
                                 "data.format=alpaca", "data.columns={instruction: question, output: answer}")
    assert (len(prepared.train), len(prepared.eval)) == (5, 2)
    assert trained_and_context(prepared.train[0], tok)[0] == "Hi 0.<|im_end|>\n"


@pytest.mark.e2e
def test_preprocess_marks_trained_tokens_of_a_tool_calling_sample(tmp_path: Path, home: Path) -> None:
    first = run_cli("pipeline.preprocess", "experiment=quickstart_tools", f"hydra.run.dir={tmp_path / 'a'}",
                    home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(messages with tool calls, loss on responses and tool calls (not tool results))" in first.stdout
    # not a terminal: brackets mark the loss; the tool-calling sample (most trained spans) is shown first
    assert ('[[<tool_call>\n{"name": "look_up", "arguments": {"scene": "A red duck eats under the tree."}}\n'
            '</tool_call><|im_end|>\n]]<|im_start|>tool\n<tool_response>\n{"animal": "duck", "colour": "red"}\n'
            '</tool_response><|im_end|>\n<|im_start|>assistant\n[[Animal: duck. Colour: red.<|im_end|>\n]]') \
        in first.stdout
    assert "train: 72 samples, tokens min" in first.stdout and "p95" in first.stdout
    assert json.loads((tmp_path / "a" / "data_stats.json").read_text())["from_cache"] is False
    # (a second run served from the cache: test_cache_serves_the_second_run, in process)


@pytest.mark.e2e
def test_quickstart_text_chunks_a_corpus_and_trains_on_every_token(tmp_path: Path, home: Path) -> None:
    result = run_cli("pipeline.train", "experiment=quickstart_text", "logger=none", "trainer.max_steps=3",
                     f"hydra.run.dir={tmp_path / 'run'}", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval samples (text, loss on all tokens)" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stats = summary["data_stats"]["train"]
    assert summary["status"] == "completed" and stats["windows"] > stats["overlength"] > 0
    assert stats["dropped_overlength"] == stats["dropped_untrained"] == 0


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BAD_DATA = {
    "columns": ([{"question": "q", "answer": "a"}], ["data.format=alpaca"],
                "error: data.format: format 'alpaca' needs columns ['instruction', 'output'] but the data has "
                "['question', 'answer']"),
    "empty": ([], [], "error: data.source: the dataset is empty"),
    "role": ([{"messages": [{"role": "bot", "content": "hi"}]}], ["data.format=messages"],
             "error: data.source: sample 0 has a message with role 'bot'"),
    "no_trained_token": ([{"messages": [{"role": "user", "content": "a long question " * 20},
                                        {"role": "assistant", "content": "yes"}]}] * 3,
                         ["data.max_length=16", "data.overlength=truncate"],
                         "error: data.loss_on: no train sample has a trained token left"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_one_line_and_exit_2(case: str, tmp_path: Path, home: Path) -> None:
    rows, overrides, expected = BAD_DATA[case]
    source = write_jsonl(tmp_path / "data.jsonl", rows)
    result = run_cli("pipeline.train", "experiment=quickstart", f"data.source={source}", "data.val_size=0",
                     *overrides, f"hydra.run.dir={tmp_path / 'run'}", home=home)
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result.stderr) == [error_lines(result.stderr)[-1]]
    assert error_lines(result.stderr)[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def error_lines(stderr: str) -> list[str]:
    """The error report; progress bars of the data loading before it are not part of it."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-2000:]
    return [line for line in lines if line.startswith("error:")]


def test_a_template_that_cannot_render_is_one_line(tmp_path: Path, home: Path) -> None:
    # Gemma's template refuses system messages; a third of the sample conversations have one
    result = run_cli("pipeline.train", "experiment=quickstart", "backend=hf", "model.chat_template=gemma",
                     f"hydra.run.dir={tmp_path / 'run'}", home=home)
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["error: model.chat_template: the chat template cannot render a train sample: "
                                          "System role not supported. Use a template that fits the data, or fix "
                                          "the samples it refuses."]


MULTI_TURN = [
    {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                  {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"},
                  {"role": "user", "content": "thanks"}]},
    {"messages": [{"role": "user", "content": "nobody answers this"}]},
    {"messages": [{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}]},
]


def prepared_with_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str) -> tuple:
    from transformers import AutoTokenizer

    monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / "cache"))
    source = write_jsonl(tmp_path / "multi.jsonl", MULTI_TURN)
    run = to_runconfig(compose("experiment=quickstart", "data.val_size=0", f"data.source={source}"))
    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    tokenizer.chat_template = template
    built = data_lib.build(run.data, tokenizer, run.seed)
    return prepare.prepare(built, tokenizer, run), tokenizer


def test_every_answer_trains_with_trls_patched_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.compat import trl_template_files

    qwen = trl_template_files()["qwen2_5"].read_text()  # no generation markers: TRL swaps in its training version
    prepared, tok = prepared_with_template(tmp_path, monkeypatch, qwen)
    assert len(prepared.train) == 2 and prepared.stats["train"].dropped_without_answer == 1
    trained = [trained_and_context(row, tok)[0] for row in prepared.train]
    # TRL's qwen2_5 training template opens the generation span on the newline after the role header
    assert trained == ["\nA1<|im_end|>\n\nA2<|im_end|>\n", "\nA3<|im_end|>\n"]  # never the user's "thanks"


def test_without_markers_every_answer_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    prepared, tok = prepared_with_template(tmp_path, monkeypatch, plain)
    trained = [trained_and_context(row, tok)[0] for row in prepared.train]
    # each answer with the line break that ends its turn; the tiny tokenizer merges " A" into one token, so the space
    # after "assistant:" trains with the answer (as a {% generation %} span starting at the answer would)
    assert trained == [" A1\n A2\n", " A3\n"]  # never the user's "thanks"


def test_empty_cells_are_named(tmp_path: Path, home: Path) -> None:
    source = tmp_path / "data.csv"
    source.write_text("instruction,input,output\nSay hi.,,Hi.\nSay bye.,,\nSay no.,,No.\nSay yes.,,\n")
    result = run_cli("pipeline.train", "experiment=quickstart", f"data.source={source}", "data.format=alpaca",
                     "data.val_size=0", f"hydra.run.dir={tmp_path / 'run'}", home=home)
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["error: data.source: sample 1 has an empty 'output'; 2 of 4 samples have "
                                          "one. Fill in each one, or remove those samples."]


def test_a_folder_is_read_as_the_data_it_holds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A README beside the data is documentation, not a text sample: the chat lines are read as messages."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "data.jsonl").write_text((DATA / "tiny_messages.jsonl").read_text())
    (folder / "README.txt").write_text("What this data is.\n")
    caplog.set_level("INFO")
    run = to_runconfig(compose("experiment=quickstart", f"data.source={folder}", "data.format=auto"))
    raw = data_lib.read(run.data)
    assert raw.format == "messages" and len(raw.dataset) == 80
    assert f"data: {folder}: 1 file read: data.jsonl (left out as documentation: README.txt)" in caplog.messages
