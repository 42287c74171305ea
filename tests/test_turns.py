"""Every assistant turn trains, with any chat template (pipeline.data.turns): where TRL ships a template with
{% generation %} markers, the masks read off the same template without them are TRL's, token for token; for the
families TRL does not patch (Llama 3.1-3.3, Mistral, Gemma 2, Qwen 3), each answer trains with its end-of-turn text,
on three-exchange conversations, through the CLI too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, compose, run_cli

from pipeline.config import to_runconfig
from pipeline.data import formats as data_lib
from pipeline.data import prepare
from pipeline.errors import ConfigError

DATA = REPO / "assets" / "data"
CONVERSATIONAL = ["tiny_messages.jsonl", "tiny_sharegpt.jsonl", "tiny_content_parts.jsonl", "tiny_multiturn.jsonl",
                  "tiny_tools.jsonl", "tiny_tools_sharegpt.jsonl"]  # every shipped conversational file
TRL_TRAINING = sorted(p.stem.removesuffix("_training") for p in (
    Path(__import__("importlib.util").util.find_spec("trl").submodule_search_locations[0]) / "chat_templates")
    .glob("*_training.jinja"))  # every template TRL ships a marked version of
# where TRL's markers and ours give the same tokens, all of them; the others differ only next to a turn (below)
EXACT = {"cohere", "gemma", "gemma3", "glm4moe", "lfm2", "llama3", "phi3", "phi3_5", "qwen2_5_vl", "qwen3",
         "qwen3_instruct_2507", "qwen3_vl"}
MARKERS = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


def trl_file(name: str) -> str:
    import importlib.util

    folder = Path(next(iter(importlib.util.find_spec("trl").submodule_search_locations))) / "chat_templates"
    return (folder / f"{name}.jinja").read_text()


def without_markers(template: str) -> str:
    """The template with its {% generation %} blocks made plain ifs: the same text, whitespace control kept."""
    return MARKERS.sub(lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ") + m[3] + "%}", template)


def labels_of(template: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str):
    """(train labels, eval labels, whether TRL's markers made them) for `source` under `template` with the tiny
    tokenizer; the one-line error instead when the data is refused."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("FT_DATA_CACHE", str(tmp_path / "cache"))
    run = to_runconfig(compose("experiment=quickstart", f"data.source={DATA / source}", "data.format=auto",
                               "model.max_seq_length=512", *overrides))
    tokenizer = AutoTokenizer.from_pretrained(run.model.name)
    tokenizer.chat_template = template
    try:
        built = data_lib.build(run.data, tokenizer, run.seed)
        prepared = prepare.prepare(built, tokenizer, run)
    except ConfigError as error:
        return error.line()
    evaluation = prepared.eval["labels"] if prepared.eval is not None else None
    return prepared.train["labels"], evaluation, built.assistant_only_loss, prepared, tokenizer


def runs(labels: list[int]) -> list[tuple[int, int]]:
    """The [start, end) runs of trained positions."""
    found, start = [], None
    for i, label in enumerate([*labels, prepare.IGNORE]):
        if label != prepare.IGNORE and start is None:
            start = i
        elif label == prepare.IGNORE and start is not None:
            found.append((start, i))
            start = None
    return found


@pytest.mark.parametrize("source", CONVERSATIONAL)
@pytest.mark.parametrize("name", TRL_TRAINING)
def test_masks_read_off_a_template_are_trls_own(name: str, source: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """TRL's marked template against the same template with its markers made plain: where TRL trains more, it is
    text next to a turn that the template writes outside the model's answer (TRL's choice, template by template):
    the generation prompt's own text (`<｜Assistant｜>`, `<|start|>assistant`, a thinking model's `<think>\\n`, the
    newline of Qwen 2.5's "<|im_start|>assistant\\n"), or gpt-oss's `<|end|>` on earlier answers. Never elsewhere,
    and never less. One template trains less than ours, next to a turn too: Gemma 4's (diffusion_gemma) ends a tool
    call with `<|tool_response>`, where the model stops for the tool, and opens the answer after the tool's result
    with a `<|turn>model` header its generation prompt does not write; TRL leaves both out, we read them off as the
    model's."""
    marked = trl_file(f"{name}_training")
    trl = labels_of(marked, source, tmp_path / "trl", monkeypatch)
    ours = labels_of(without_markers(marked), source, tmp_path / "ours", monkeypatch)
    if isinstance(trl, str):  # a template that cannot render the data (tools, a system turn) is refused alike
        assert ours == trl
        return
    if name == "idefics3":  # a vision template: it renders text content only as parts, and drops a plain string
        assert ours.startswith("error: model.chat_template: the tokenizer's own chat template cannot be split into "
                               "assistant turns")
        return
    assert trl[2] is True and ours[2] is False  # TRL's masks, from its markers; ours, read off the same text
    for trl_labels, our_labels in ((trl[0], ours[0]), (trl[1], ours[1])):
        for row_trl, row_ours in zip(trl_labels, our_labels, strict=True):
            if name in EXACT:
                assert row_ours == row_trl
                continue
            only_trl = runs([a if b == prepare.IGNORE else prepare.IGNORE for a, b in zip(row_trl, row_ours,
                                                                                           strict=True)])
            only_ours = runs([b if a == prepare.IGNORE else prepare.IGNORE for a, b in zip(row_trl, row_ours,
                                                                                            strict=True)])
            assert not only_ours or name == "diffusion_gemma", name  # never less than TRL, but for Gemma 4's tools
            for extra, other in ((only_trl, row_ours), (only_ours, row_trl)):
                edges = {edge for span in runs(other) for edge in span}
                assert all(end in edges or start in edges for start, end in extra), name  # next to a turn


# --- the families TRL does not patch: each answer and its end-of-turn text, three times a conversation -----------

def unsloth_template(name: str) -> str:
    import unsloth  # noqa: F401 - before transformers' tokenizer use, as the project imports it
    from transformers import AutoTokenizer
    from unsloth.chat_templates import get_chat_template

    tokenizer = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama")
    return get_chat_template(tokenizer, chat_template=name, map_eos_token=False).chat_template


def published_template(name: str) -> str:
    """A model's published chat template as axolotl ships it (axolotl/utils/chat_templates/templates/<name>.jinja in
    the wheel `make setup` downloads, pinned, and does not install): mistral_v2v3 is Mistral-7B-Instruct-v0.3's,
    mistral_v3_tekken Mistral-Nemo-Instruct-2407's, gemma Gemma 2's (and Gemma 1's); axolotl's copies also read
    content given as parts, and render plain strings exactly as the originals."""
    import zipfile

    wheels = sorted((REPO / ".venv" / "published").glob("axolotl-*.whl"))
    assert wheels, "the published templates are missing: run `make setup`"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return wheel.read(f"axolotl/utils/chat_templates/templates/{name}.jinja").decode()


FAMILIES = {  # template -> (its text, what follows each answer in a trained span)
    "unsloth llama-3.1": (lambda: unsloth_template("llama-3.1"), "<|eot_id|>"),
    "unsloth mistral": (lambda: unsloth_template("mistral"), "<|im_end|>"),  # the tokenizer's eos, as Unsloth writes
    "unsloth gemma2": (lambda: unsloth_template("gemma2"), "<end_of_turn>\n"),
    "unsloth qwen-3": (lambda: unsloth_template("qwen-3"), "<|im_end|>\n"),
    "Llama 3.1's own (TRL's copy)": (lambda: trl_file("llama3_1"), "<|eot_id|>"),
    "Llama 3.2's own (TRL's copy)": (lambda: trl_file("llama3_2"), "<|eot_id|>"),
    # Mistral v0.3 writes the system prompt before the *last* question: the conversation up to an earlier answer
    # renders otherwise than the whole conversation begins
    "Mistral v0.3's own": (lambda: published_template("mistral_v2v3"), "<|im_end|>"),  # the tokenizer's eos
    "Mistral NeMo's own": (lambda: published_template("mistral_v3_tekken"), "<|im_end|>"),
    "Gemma 2's own": (lambda: published_template("gemma"), "<end_of_turn>\n"),  # refuses a system turn
}  # (Qwen 3's and Gemma 3's own templates are ones TRL ships marked versions of: test_masks_read_off_...trls_own)
NO_SYSTEM = {"Gemma 2's own"}


def without_system(tmp_path: Path) -> Path:
    """tiny_multiturn.jsonl without its system turns, for templates that refuse one."""
    rows = [json.loads(line) for line in (DATA / "tiny_multiturn.jsonl").read_text().splitlines()]
    return Path(write_rows(tmp_path / "no_system.jsonl", [
        {"messages": [m for m in row["messages"] if m["role"] != "system"]} for row in rows]))


def answers_of(row: dict) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "assistant"]


def trained_runs(input_ids: list[int], labels: list[int], tokenizer) -> list[str]:  # noqa: ANN001
    runs, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != prepare.IGNORE:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_answer_of_a_three_exchange_conversation_trains(family: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    template, end = FAMILIES[family][0](), FAMILIES[family][1]
    source = without_system(tmp_path) if family in NO_SYSTEM else DATA / "tiny_multiturn.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    _, _, marked, prepared, tokenizer = labels_of(template, str(source), tmp_path, monkeypatch,
                                                  "data.val_size=0", "eval.before_after=false")
    assert marked is False  # no TRL markers: read off the template
    for row, sample in zip(rows, prepared.train, strict=True):
        runs = trained_runs(sample["input_ids"], sample["labels"], tokenizer)
        expected = [answer + end for answer in answers_of(row)]
        if family.endswith("qwen-3"):  # the last answer opens with an empty think block
            expected[-1] = "<think>\n\n</think>\n\n" + expected[-1]
        assert [run.strip(" ") for run in runs] == expected, family


@pytest.mark.parametrize("name", ["mistral_v2v3", "mistral_v3_tekken"])
def test_tool_call_turns_train_on_mistrals_own_templates(name: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Mistral renders a call as `[TOOL_CALLS] [{..., "id": ...}]</s>`, and needs ids of nine characters: with them,
    the call and the answer after the tool's result train, each with its end of turn; without them, one line."""
    rows = [json.loads(line) for line in (DATA / "tiny_tools.jsonl").read_text().splitlines()]
    line = labels_of(published_template(name), "tiny_tools.jsonl", tmp_path / "bare", monkeypatch)
    assert line == ("error: model.chat_template: the chat template cannot render a train sample: Tool call IDs "
                    "should be alphanumeric strings with length 9!. Use a template that fits the data, or fix the "
                    "samples it refuses.")
    for row in rows:
        for turn in row["messages"]:
            for call in turn.get("tool_calls") or []:
                call["id"] = "call00001"
            if turn["role"] == "tool":
                turn["tool_call_id"] = "call00001"
    source = write_rows(tmp_path / "with_ids.jsonl", rows)
    _, _, marked, prepared, tokenizer = labels_of(published_template(name), source, tmp_path, monkeypatch,
                                                  "data.val_size=0", "eval.before_after=false",
                                                  "model.max_seq_length=1024")  # the tool list precedes a question
    assert marked is False
    calls = 0
    for row, sample in zip(rows, prepared.train, strict=True):
        runs = trained_runs(sample["input_ids"], sample["labels"], tokenizer)
        turns = [m for m in row["messages"] if m["role"] == "assistant"]
        assert len(runs) == len(turns)
        for run, turn in zip(runs, turns, strict=True):
            if turn.get("tool_calls"):
                calls += 1
                names = [c["function"]["name"] for c in turn["tool_calls"]]
                assert run.startswith("[TOOL_CALLS]") and run.endswith('"id": "call00001"}]<|im_end|>'), run
                assert all(f'"name": "{n}"' in run for n in names)
            else:
                assert run.strip(" ") == turn["content"] + "<|im_end|>"
    assert calls >= len(rows) // 2  # most samples call a tool


@pytest.mark.parametrize("source", CONVERSATIONAL)
@pytest.mark.parametrize("name", TRL_TRAINING)
def test_a_template_trl_can_patch_trains_on_trls_own_masks(name: str, source: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokenizer whose template is one TRL patches (its original, without markers) trains on TRL's masks: the
    pipeline swaps in TRL's marked copy, and TRL's tokenization builds the masks from its markers."""
    ours = labels_of(trl_file(name), source, tmp_path / "original", monkeypatch)
    trl = labels_of(trl_file(f"{name}_training"), source, tmp_path / "marked", monkeypatch)
    if isinstance(trl, str):
        assert ours == trl
        return
    assert ours[2] is True and ours[0] == trl[0] and ours[1] == trl[1]


def test_per_turn_flags_keep_working_without_markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [json.loads(line) for line in (DATA / "tiny_multiturn.jsonl").read_text().splitlines()]
    for row in rows:  # the second answer (the colour alone) is context only
        [m for m in row["messages"] if m["role"] == "assistant"][1]["train"] = False
    source = tmp_path / "flagged.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    _, _, _, prepared, tokenizer = labels_of(unsloth_template("llama-3.1"), str(source), tmp_path, monkeypatch,
                                             "data.val_size=0", "eval.before_after=false")
    for row, sample in zip(rows, prepared.train, strict=True):
        first, _, third = answers_of(row)
        assert trained_runs(sample["input_ids"], sample["labels"], tokenizer) == [f"{first}<|eot_id|>",
                                                                                  f"{third}<|eot_id|>"]


def test_a_template_that_cannot_be_split_is_refused_in_one_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A template that renders an answer only by its length, say, gives no text to find the turn by."""
    scrambled = ("{%- for m in messages %}{{- m['role'] + ': ' }}{%- if m['role'] == 'assistant' %}"
                 "{{- m['content'] | length }}{%- else %}{{- m['content'] }}{%- endif %}{{- '\\n' }}{%- endfor %}"
                 "{%- if add_generation_prompt %}{{- 'assistant: ' }}{%- endif %}")
    line = labels_of(scrambled, "tiny_multiturn.jsonl", tmp_path, monkeypatch)
    assert line.startswith("error: model.chat_template: the tokenizer's own chat template cannot be split into "
                           "assistant turns (train sample 0: it renders an answer's text otherwise when the text "
                           "changes). Use a template that marks assistant turns with {% generation %}, or train "
                           "every token with data.loss_on=all.")


# --- through the CLI: trained-token counts in summary.json are the answers' and their end-of-turn tokens' ----------

def expected_trained_tokens(template: str, end: str, last_opens: str = "") -> int:
    """Counted without pipeline.data.turns: each answer followed by `end` (the last one preceded by `last_opens`),
    found in order in the rendering."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama")
    tokenizer.chat_template = template
    total = 0
    for line in (DATA / "tiny_multiturn.jsonl").read_text().splitlines():
        row = json.loads(line)
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        encoding = tokenizer(text, add_special_tokens=False)
        position, trained = 0, set()
        answers = answers_of(row)
        for k, answer in enumerate(answers):
            span = (last_opens if k == len(answers) - 1 else "") + answer + end
            start = text.index(span, position)
            position = start + len(span)
            trained |= {encoding.char_to_token(c) for c in range(start, position)}
        total += len(trained)
    return total


@pytest.mark.e2e
@pytest.mark.parametrize("template,backend", [("llama-3.1", "unsloth"), ("mistral", "unsloth"),
                                              ("gemma2", "unsloth"), ("qwen-3", "unsloth"), ("llama-3.1", "hf")])
def test_three_exchange_conversations_train_every_answer_through_the_cli(template: str, backend: str, tmp_path: Path,
                                                                         home: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli("pipeline.train", "experiment=quickstart", "logger=none", f"backend={backend}",
                     f"model.chat_template={template}", f"data.source={DATA / 'tiny_multiturn.jsonl'}",
                     "data.val_size=0", "model.max_seq_length=512", "trainer.max_steps=1", f"hydra.run.dir={run_dir}",
                     home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((run_dir / "summary.json").read_text())["data_stats"]["train"]
    if backend == "hf":  # TRL's file for Llama 3.1
        text, end = trl_file("llama3_1"), "<|eot_id|>"
    else:
        text, end = unsloth_template(template), {"llama-3.1": "<|eot_id|>", "mistral": "<|im_end|>",
                                                 "gemma2": "<end_of_turn>\n", "qwen-3": "<|im_end|>\n"}[template]
    opens = "<think>\n\n</think>\n\n" if template == "qwen-3" else ""
    assert stats["samples"] == 80 and stats["trained_tokens"] == expected_trained_tokens(text, end, opens)


# --- LLaMA-Factory's system and history columns ------------------------------------------------------------------

def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


ALPACA_WITH_HISTORY = [{"system": "You are exact.", "instruction": "Both, in one line.", "input": "",
                        "output": f"Animal: {animal}. Colour: {colour}.",
                        "history": [[f"Name the animal.\nA {colour} {animal} sits.", f"Animal: {animal}."],
                                    ["And its colour?", f"Colour: {colour}."]]}
                       for animal, colour in [("fox", "red"), ("owl", "grey"), ("cat", "black")] * 4]


@pytest.mark.parametrize("mask_history", [False, True])
def test_alpaca_history_becomes_a_conversation_whose_earlier_answers_train(mask_history: bool, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """LLaMA-Factory trains the history's answers too unless mask_history; its system prompt leads the conversation."""
    from transformers import AutoTokenizer

    source = write_rows(tmp_path / "alpaca.jsonl", ALPACA_WITH_HISTORY)
    template = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama").chat_template
    _, _, _, prepared, tokenizer = labels_of(template, source, tmp_path, monkeypatch, "data.format=alpaca",
                                             "data.val_size=0", "eval.before_after=false",
                                             f"data.mask_history={str(mask_history).lower()}")
    row, sample = ALPACA_WITH_HISTORY[0], prepared.train[0]
    text = tokenizer.decode(sample["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are exact.<|im_end|>\n<|im_start|>user\nName the animal.")
    answers = [answer for _, answer in row["history"]] + [row["output"]]
    expected = answers[-1:] if mask_history else answers
    assert trained_runs(sample["input_ids"], sample["labels"], tokenizer) == [f"{a}<|im_end|>\n" for a in expected]


def test_sharegpt_system_column_leads_the_conversation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    rows = [{"system": "You are exact.", "conversations": [{"from": "human", "value": "Name the animal."},
                                                           {"from": "gpt", "value": "Animal: fox."}]}] * 8
    template = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama").chat_template
    _, _, _, prepared, tokenizer = labels_of(template, write_rows(tmp_path / "sharegpt.jsonl", rows), tmp_path,
                                             monkeypatch, "data.val_size=0", "eval.before_after=false")
    assert tokenizer.decode(prepared.train[0]["input_ids"]).startswith("<|im_start|>system\nYou are exact.<|im_end|>")


@pytest.mark.parametrize("history,problem", [
    ("a string", "sample 0: its 'history' is not a list of [question, answer] pairs of text"),
    ([["only a question"]], "sample 0: its 'history' is not a list of [question, answer] pairs of text"),
])
def test_a_misshapen_history_is_named_before_any_model_import(history, problem: str, tmp_path: Path) -> None:  # noqa: ANN001
    source = write_rows(tmp_path / "bad.jsonl", [{**ALPACA_WITH_HISTORY[0], "history": history}])
    run = to_runconfig(compose("experiment=quickstart", f"data.source={source}", "data.format=alpaca"))
    with pytest.raises(ConfigError) as refused:
        data_lib.read(run.data)
    assert refused.value.line().startswith(f"error: data.source: {problem}")


@pytest.mark.parametrize("columns,line", [
    ("{roles_to_train: [assistant], train_on_eos: turn}", None),  # what this pipeline does: accepted
    ("{roles_to_train: [gpt]}", None),
    ("{roles_to_train: [user, assistant]}", "error: data.columns.roles_to_train: ['user', 'assistant']: only the "
                                            "assistant's turns train here (not ['user'])"),
    ("{train_on_eos: last}", "error: data.columns.train_on_eos: 'last': every trained turn ends with its end-of-turn "
                             "token here (axolotl's 'turn')"),
])
def test_axolotls_chat_template_keys_are_read_or_refused_by_name(columns: str, line: str | None) -> None:
    """Checked with the config, before any data is read."""
    if line is None:
        run = to_runconfig(compose("experiment=quickstart", f"data.columns={columns}"))
        assert len(data_lib.read(run.data).dataset) == 80
        return
    with pytest.raises(ConfigError) as refused:
        to_runconfig(compose("experiment=quickstart", f"data.columns={columns}"))
    assert refused.value.line().startswith(line)


def test_mask_history_without_a_history_column_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(REPO / "assets" / "tiny-llama").chat_template
    labels_of(template, "tiny_messages.jsonl", tmp_path, monkeypatch, "data.mask_history=true")
    assert "data: data.mask_history is not used: it applies to alpaca rows with a history column, and this messages " \
           "data has none" in caplog.messages
