"""Write the repository's small datasets (deterministic; re-run to regenerate).

Two parts, like a real base model and a real fine-tune:
- `tiny_corpus.jsonl`: general prose (short scenes, sometimes followed, a few sentences later, by a note such as
  "Animal: fox." or "Colour: red."), the text tools/make_tiny_model.py pre-trains the tiny base on;
- `tiny_documents.txt`: more of that prose as plain text, a document per paragraph (continued pre-training);
- the instruction set, in five formats (and OpenAI-style content parts, `tiny_content_parts.jsonl`; tool calling as
  messages, `tiny_tools.jsonl`, and as glaive / LLaMA-Factory sharegpt, `tiny_tools_sharegpt.jsonl`): "Name the
  animal and its colour." over a new scene, answered in one fixed line ("Animal: fox. Colour: red."); and as three
  exchanges a conversation, `tiny_multiturn.jsonl` (the animal, then its colour, then both in one line). The base knows
  the words and can find an animal or a colour, but has never seen a chat or that answer, so it scores 0/8 on the
  held-out scenes; the quickstart's 30 QLoRA steps teach it;
- preference data over new scenes, the right answer against one with the wrong colour or animal: as TRL's pairs
  (`tiny_dpo.jsonl`), LLaMA-Factory's sharegpt and alpaca ranking forms (`tiny_dpo_sharegpt.jsonl`,
  `tiny_dpo_alpaca.jsonl`), and as LLaMA-Factory's KTO form, answers labelled one by one (`tiny_kto.jsonl`).
"""

import json
import random
from pathlib import Path

ANIMALS = ["cat", "dog", "fox", "owl", "horse", "mouse", "duck", "sheep"]
COLOURS = ["red", "blue", "green", "black", "white", "brown", "grey", "yellow"]
TRAITS = ["small", "big", "old", "young", "quiet", "happy"]
VERBS = ["sleeps", "runs", "sits", "waits", "plays", "eats"]
PLACES = ["in the garden", "by the river", "on the hill", "near the house", "under the tree", "in the field"]
FILLER = ["It was a long day.", "Then it rained.", "Nobody saw it.", "The wind was cold.", "It is still there.",
          "We watched for a while.", "Later the sun came out.", "Everything was calm.", "So it goes.",
          "Then we went home."]
SYSTEM = "You are a short, exact assistant."
INSTRUCTION = "Name the animal and its colour."
REPLY = "Animal: {animal}. Colour: {colour}."
SAMPLES = 80                   # 72 train + 8 held out at the quickstart's val_size 0.1


def scene(rng: random.Random) -> tuple[str, str, str]:
    """(one sentence, its animal, its colour)."""
    animal, colour, trait, verb, place = (rng.choice(words) for words in (ANIMALS, COLOURS, TRAITS, VERBS, PLACES))
    sentence = rng.choice([f"The {trait} {colour} {animal} {verb} {place}.", f"A {colour} {animal} {verb} {place}.",
                           f"{place.capitalize()}, the {trait} {colour} {animal} {verb}."])
    return sentence, animal, colour


def note(rng: random.Random, animal: str, colour: str) -> str:
    """How the corpus notes what a scene holds: one thing, or both with other sentences between them (never the
    fine-tune's one-line answer)."""
    one, other = rng.sample([f"Animal: {animal}.", f"Colour: {colour}."], 2)
    return one if rng.random() < 0.5 else f"{one} {filler(rng)} {other}"


def filler(rng: random.Random) -> str:
    return " ".join(rng.sample(FILLER, rng.randint(1, 2)))


def reply(animal: str, colour: str) -> str:
    """The answer format the fine-tune teaches (the base has never produced it)."""
    return REPLY.format(animal=animal, colour=colour)


def make_pairs(rng: random.Random) -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples: a scene and its fixed-format answer."""
    pairs = []
    for _ in range(SAMPLES):
        sentence, animal, colour = scene(rng)
        pairs.append((INSTRUCTION, sentence, reply(animal, colour)))
    return pairs


def make_preferences(rng: random.Random) -> list[tuple[str, str, str]]:
    """(input, right answer, wrong answer): the wrong one names another colour (two in three) or another animal."""
    rows = []
    for _ in range(SAMPLES):
        sentence, animal, colour = scene(rng)
        if rng.random() < 2 / 3:
            wrong = reply(animal, rng.choice([c for c in COLOURS if c != colour]))
        else:
            wrong = reply(rng.choice([a for a in ANIMALS if a != animal]), colour)
        rows.append((sentence, reply(animal, colour), wrong))
    return rows


def as_preference(input_: str, right: str, wrong: str, form: str) -> dict:
    question = f"{INSTRUCTION}\n{input_}"
    if form == "trl":
        return {"prompt": [{"role": "user", "content": question}], "chosen": [{"role": "assistant", "content": right}],
                "rejected": [{"role": "assistant", "content": wrong}]}
    if form == "sharegpt":
        return {"conversations": [{"from": "human", "value": question}], "chosen": {"from": "gpt", "value": right},
                "rejected": {"from": "gpt", "value": wrong}}
    return {"instruction": INSTRUCTION, "input": input_, "chosen": right, "rejected": wrong}


def as_kto(k: int, input_: str, right: str, wrong: str) -> dict:
    """Every other row the wrong answer, labelled undesirable."""
    answer = right if k % 2 == 0 else wrong
    return {"messages": [{"role": "user", "content": f"{INSTRUCTION}\n{input_}"},
                         {"role": "assistant", "content": answer}], "label": k % 2 == 0}


def make_corpus(rng: random.Random, paragraphs: int = 400) -> list[str]:
    """Plain prose over the same words, never a question and never a chat: what the base learns language from.

    A catalogue note sometimes follows its scene after other sentences or a line break, so the base learns to find
    the animal and colour by what they are, not by where they stand (which a chat prompt would break).
    """
    paragraphs_out = []
    for _ in range(paragraphs):
        text = ""
        for _ in range(rng.randint(1, 3)):
            sentence, animal, colour = scene(rng)
            text += (" " if text else "") + sentence
            if rng.random() < 0.5:
                if rng.random() < 0.6:
                    text += " " + filler(rng)
                text += rng.choice([" ", "\n", "\n\n"]) + note(rng, animal, colour)
        paragraphs_out.append(text)
    return paragraphs_out


def as_messages(instruction: str, input_: str, output: str, with_system: bool) -> dict:
    messages = [{"role": "user", "content": f"{instruction}\n{input_}"}, {"role": "assistant", "content": output}]
    if with_system:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    return {"messages": messages}


def as_multiturn(input_: str, output: str, with_system: bool) -> dict:
    """The same scene asked in three exchanges: every answer is the model's to learn (multi-turn masks)."""
    animal, colour = output.removesuffix(".").split(". ")
    turns = [("Name the animal.\n" + input_, animal + "."), ("And its colour?", colour + "."), ("Both, in one line.",
                                                                                              output)]
    messages = [{"role": role, "content": text} for question, answer in turns
                for role, text in (("user", question), ("assistant", answer))]
    return {"messages": ([{"role": "system", "content": SYSTEM}] if with_system else []) + messages}


def as_sharegpt(instruction: str, input_: str, output: str) -> dict:
    return {"conversations": [{"from": "human", "value": f"{instruction}\n{input_}"}, {"from": "gpt", "value": output}]}


def as_content_parts(row: dict) -> dict:
    """OpenAI-style content: a list of text parts (the user's instruction and scene as two; joined by a line break
    they read as in tiny_messages.jsonl)."""
    return {"messages": [{"role": m["role"], "content": [{"type": "text", "text": piece} for piece in
                                                         (m["content"].split("\n") if m["role"] == "user" else
                                                          [m["content"]])]} for m in row["messages"]]}


# two tools with different parameters (the tiny tokenizer spends a token per JSON character: kept short)
LOOK_UP = {"name": "look_up", "description": "The animal and colour of a scene.",
           "parameters": {"type": "object", "properties": {"scene": {"type": "string"}}, "required": ["scene"]}}
COUNT = {"name": "count", "parameters": {"type": "object", "properties": {"unit": {"enum": ["words", "letters"]}}}}


def tool_turns(k: int, input_: str, animal: str, colour: str) -> tuple[list[dict] | None, str]:
    """Sample k's tools and how it uses them: two in three call look_up (its arguments as an object, or as the JSON
    string OpenAI's API sends), one in three answers without a call; the tool list differs between samples."""
    tools = [LOOK_UP] if k % 2 else [LOOK_UP, COUNT]
    if k % 3 == 2:
        return tools, ""
    return tools, json.dumps({"animal": animal, "colour": colour})


def as_tool_messages(k: int, instruction: str, input_: str, output: str) -> dict:
    animal, colour = output.removeprefix("Animal: ").removesuffix(".").split(". Colour: ")
    tools, result = tool_turns(k, input_, animal, colour)
    messages = [{"role": "user", "content": f"{instruction}\n{input_}"}]
    if result:
        arguments = {"scene": input_}
        call = {"type": "function", "function": {"name": "look_up",
                                                 "arguments": json.dumps(arguments) if k % 3 else arguments}}
        messages += [{"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "content": result}]
    messages.append({"role": "assistant", "content": output})
    return {"messages": messages, "tools": [{"type": "function", "function": tool} for tool in tools]}


def as_tool_sharegpt(k: int, instruction: str, input_: str, output: str) -> dict:
    """LLaMA-Factory's glaive_toolcall form: function_call / observation turns, tools as a JSON string."""
    animal, colour = output.removeprefix("Animal: ").removesuffix(".").split(". Colour: ")
    tools, result = tool_turns(k, input_, animal, colour)
    turns = [{"from": "human", "value": f"{instruction}\n{input_}"}]
    if result:
        turns += [{"from": "function_call", "value": json.dumps({"name": "look_up", "arguments": {"scene": input_}})},
                  {"from": "observation", "value": result}]
    turns.append({"from": "gpt", "value": output})
    return {"conversations": turns, "tools": json.dumps(tools)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(out: Path = Path("assets/data")) -> None:
    pairs = make_pairs(random.Random(0))
    write_jsonl(out / "tiny_corpus.jsonl", [{"text": text} for text in make_corpus(random.Random(1))])
    messages = [as_messages(i, x, o, with_system=k % 3 == 0) for k, (i, x, o) in enumerate(pairs)]
    write_jsonl(out / "tiny_messages.jsonl", messages)
    write_jsonl(out / "tiny_content_parts.jsonl", [as_content_parts(row) for row in messages])
    write_jsonl(out / "tiny_multiturn.jsonl", [as_multiturn(x, o, with_system=k % 3 == 0)
                                               for k, (_, x, o) in enumerate(pairs)])
    write_jsonl(out / "tiny_alpaca.jsonl", [{"instruction": i, "input": x, "output": o} for i, x, o in pairs])
    write_jsonl(out / "tiny_sharegpt.jsonl", [as_sharegpt(i, x, o) for i, x, o in pairs])
    write_jsonl(out / "tiny_tools.jsonl", [as_tool_messages(k, i, x, o) for k, (i, x, o) in enumerate(pairs)])
    write_jsonl(out / "tiny_tools_sharegpt.jsonl", [as_tool_sharegpt(k, i, x, o) for k, (i, x, o) in enumerate(pairs)])
    write_jsonl(out / "tiny_prompt_completion.jsonl",
                [{"prompt": f"{i} {x}\nAnswer:", "completion": f" {o}"} for i, x, o in pairs])
    write_jsonl(out / "tiny_text.jsonl", [{"text": f"Question: {i} {x}\nAnswer: {o}"} for i, x, o in pairs])
    # plain text for continued pre-training: a document per paragraph, blank lines between (experiment=quickstart_text)
    (out / "tiny_documents.txt").write_text("\n\n".join(make_corpus(random.Random(2), paragraphs=60)) + "\n")
    preferences = make_preferences(random.Random(3))
    for form, name in (("trl", "tiny_dpo"), ("sharegpt", "tiny_dpo_sharegpt"), ("alpaca", "tiny_dpo_alpaca")):
        write_jsonl(out / f"{name}.jsonl", [as_preference(*row, form) for row in preferences])
    write_jsonl(out / "tiny_kto.jsonl", [as_kto(k, *row) for k, row in enumerate(preferences)])
    print(f"wrote {len(pairs)} samples per format and a general-text corpus to {out}")


if __name__ == "__main__":
    main()
