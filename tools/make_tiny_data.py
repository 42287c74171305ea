"""Write the repository's small instruction datasets (deterministic; re-run to regenerate).

The facts are simple and regular on purpose: a 145k-parameter model can learn them in seconds on CPU,
so a fine-tune that works shows a falling loss and right answers.
"""

import json
import random
from pathlib import Path

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red",
           "sun": "yellow", "orange": "orange", "violet": "purple", "sea": "blue", "leaf": "green"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "light": "dark",
             "open": "closed", "early": "late", "full": "empty", "happy": "sad", "old": "new"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SYSTEM = "You are a short, exact assistant."


def make_pairs(rng: random.Random) -> list[tuple[str, str, str]]:
    """(instruction, input, output) triples over four task families."""
    pairs = []
    for a in range(6):
        for b in range(5):
            pairs.append(("Add the two numbers.", f"{a} + {b}", f"{a} + {b} = {a + b}."))
    for thing, colour in COLOURS.items():
        pairs.append((f"What colour is the {thing}?", "", f"The {thing} is {colour}."))
    for word, opposite in OPPOSITES.items():
        pairs.append(("Give the opposite of the word.", word, f"The opposite of {word} is {opposite}."))
        pairs.append(("Give the opposite of the word.", opposite, f"The opposite of {opposite} is {word}."))
    for n, word in enumerate(NUMBER_WORDS):
        pairs.append(("Write the number as a word.", str(n), f"{n} is written {word}."))
    rng.shuffle(pairs)
    return pairs


def as_messages(instruction: str, input_: str, output: str, with_system: bool) -> dict:
    user = f"{instruction}\n{input_}" if input_ else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if with_system:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(out: Path = Path("assets/data")) -> None:
    rng = random.Random(0)
    pairs = make_pairs(rng)
    write_jsonl(out / "tiny_messages.jsonl",
                [as_messages(i, x, o, with_system=k % 3 == 0) for k, (i, x, o) in enumerate(pairs)])
    write_jsonl(out / "tiny_alpaca.jsonl", [{"instruction": i, "input": x, "output": o} for i, x, o in pairs])
    write_jsonl(out / "tiny_sharegpt.jsonl", [as_sharegpt(i, x, o) for i, x, o in pairs])
    write_jsonl(out / "tiny_prompt_completion.jsonl",
                [{"prompt": f"{i} {x}".strip() + "\nAnswer:", "completion": f" {o}"} for i, x, o in pairs])
    # a layout the tiny base did not see in pre-training, so fine-tuning on raw text visibly learns it
    write_jsonl(out / "tiny_text.jsonl",
                [{"text": f"Question: {i} {x}".strip() + f"\nAnswer: {o}"} for i, x, o in pairs])
    print(f"wrote {len(pairs)} samples per format to {out}")


def as_sharegpt(instruction: str, input_: str, output: str) -> dict:
    user = f"{instruction}\n{input_}" if input_ else instruction
    return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": output}]}


if __name__ == "__main__":
    main()
