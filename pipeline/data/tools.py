"""Tool-calling data -> what chat templates render with `tools=`: a tools list, assistant `tool_calls`, `tool` turns.

Read in two forms:
  - messages (OpenAI / TRL): a `tools` column (a list of JSON schemas, or that list as a JSON string), assistant
    messages with `tool_calls` (`{"type": "function", "function": {"name", "arguments"}}`, arguments an object or a
    JSON string), and `tool` messages holding the results;
  - sharegpt (glaive / LLaMA-Factory): `function_call` turns whose value is a JSON call `{"name", "arguments"}` (or a
    list of them), `observation` turns holding the results, and `tools` as a JSON string of function definitions.
Written in one form: calls as `{"type": "function", "function": {"name", "arguments": {...}}}` (templates render
arguments with `tojson`, so a JSON string would be quoted twice), tool definitions wrapped the same way, and `tools`
as a JSON string that TRL's tokenization parses back (Arrow would merge different tools' schemas, adding null keys).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.errors import ConfigError, first_line

TOOLS = "tools"  # the column holding a sample's tool definitions
CALL_ROLE, RESULT_ROLE = "function_call", "observation"  # sharegpt's names for a tool call and its result
# what tool-calling data can ask a template to render, in words
PARTS = {"tools": "the tool definitions (tools=)", "calls": "the assistant's tool calls", "results": "tool results"}
_PROBE_TOOL, _PROBE_CALL, _PROBE_RESULT = "probe_tool_zq", "probe_call_zq", "probe_result_zq"
_PROBE_ID = "probezq01"


def _json(value: Any, what: str, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ConfigError("data.source", f"{where}: {what} is not valid JSON ({error.msg} at character {error.pos}): "
                          f"{value[:60]!r}", "write it as JSON, or remove the sample") from error


def tool_call(call: Any, where: str) -> dict:
    """One call in the form templates render: `{"type": "function", "function": {"name", "arguments": {...}}}`."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConfigError("data.source", f"{where}: a tool call {str(call)[:60]!r} has no function name",
                          'write calls as {"name": ..., "arguments": {...}} (optionally under "function")')
    arguments = _json(function.get("arguments", function.get("parameters")) or {}, "a tool call's arguments", where)
    if not isinstance(arguments, dict):
        raise ConfigError("data.source", f"{where}: the arguments of tool call '{function['name']}' are "
                          f"{type(arguments).__name__}, not an object", 'write them as {"name": value, ...}')
    written = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call, dict) and isinstance(call.get("id"), str):  # Mistral's templates render (and require) it
        written["id"] = call["id"]
    return written


def function_calls(value: Any, where: str) -> list[dict]:
    """A sharegpt `function_call` turn's value (one JSON call or a list of them) as `tool_calls`."""
    calls = _json(value, "a function_call turn", where)
    return [tool_call(call, where) for call in (calls if isinstance(calls, list) else [calls])]


def tool_definitions(value: Any, where: str) -> list[dict] | None:
    """A sample's tools as OpenAI-style definitions (`{"type": "function", "function": {...}}`); None for none."""
    tools = _json(value, "its tools", where)
    if not tools:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ConfigError("data.source", f"{where}: its tools are {type(tools).__name__}, not a list of definitions",
                          'write tools as [{"type": "function", "function": {"name": ..., "parameters": ...}}]')
    return [_without_nulls(t if "function" in t else {"type": "function", "function": t}) for t in tools]


def _without_nulls(value: Any) -> Any:
    """Drop the null keys Arrow adds when it merges the schemas of different tools into one column type."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def used(conversations: list, tools: list | None) -> list[str]:
    """Which of PARTS the data holds: tool definitions, assistant tool calls, tool results."""
    calls = results = False
    for messages in conversations:  # one pass: this runs over every turn of the data
        for turn in messages:
            calls = calls or bool(turn.get("tool_calls"))
            results = results or turn.get("role") == "tool"
    found = {"tools": any(_json(t, "its tools", "a sample") not in (None, [], "") for t in tools or []),
             "calls": calls, "results": results}
    return [part for part, present in found.items() if present]


def normalize_row(row: dict, index: int) -> dict:
    """One sample in the written form (see the module text); null keys Arrow added to messages are dropped."""
    where = f"sample {index}"
    messages = []
    for turn in row["messages"]:
        turn = {k: v for k, v in turn.items() if v is not None}
        if turn.get("tool_calls"):
            turn = {**turn, "content": turn.get("content") or "",
                    "tool_calls": [tool_call(call, where) for call in turn["tool_calls"]]}
        messages.append(turn)
    return {"messages": messages, TOOLS: json.dumps(tool_definitions(row.get(TOOLS), where))}


def features(dataset: Any) -> Any:
    """The dataset's features with messages stored as JSON per message (no merged schema) and tools as a string."""
    from datasets import Features, Json, List, Value

    return Features({**dataset.features, "messages": List(Json()), TOOLS: Value("string")})


def check_renders(tokenizer: Any, parts: list[str], template: str) -> None:
    """Refuse a chat template that drops (or cannot render) what the tool-calling data holds, naming the template."""
    call = tool_call({"name": _PROBE_CALL, "id": _PROBE_ID}, "probe")  # an id of nine characters, as Mistral needs
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "content": _PROBE_RESULT, "tool_call_id": _PROBE_ID},
             {"role": "assistant", "content": "ok"}]
    tool = {"type": "function", "function": {"name": _PROBE_TOOL, "description": "a probe",
                                             "parameters": {"type": "object", "properties": {}}}}
    fix = ("use a template that renders tools, e.g. the model's own Qwen 2.5/3 or Llama 3.1+ template, or remove "
           "the tool data")
    try:
        rendered = tokenizer.apply_chat_template(probe, tools=[tool], tokenize=False)
    except Exception as error:  # noqa: BLE001 - a template's own refusal (raise_exception) or a Jinja error
        raise ConfigError("model.chat_template", f"{template} cannot render tool-calling data: {first_line(error)}",
                          fix) from error
    markers = {"tools": _PROBE_TOOL, "calls": _PROBE_CALL, "results": _PROBE_RESULT}
    dropped = [PARTS[part] for part in parts if markers[part] not in rendered]
    if dropped:
        listed = ", ".join(dropped[:-1]) + " and " + dropped[-1] if len(dropped) > 1 else dropped[0]
        raise ConfigError("model.chat_template", f"{template} cannot render tool-calling data: it drops {listed}", fix)
