"""Build the tiny offline Llama (tokenizer + weights) that quickstart and the tests fine-tune.

A byte-level BPE tokenizer is trained on the sample texts, wrapped with a ChatML template that carries
`{% generation %}` markers (so TRL's assistant-only loss works) and renders tools, and a 2-layer Llama is pre-trained
for about a minute on the general-text corpus (assets/data/tiny_corpus.jsonl). It has never seen a chat or a question,
so the quickstart's fine-tune visibly teaches it a task. Deterministic: re-running writes the same files.
"""

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# ChatML with {% generation %} markers (the model writes its answer, the end-of-turn token and the line break after it,
# as in TRL's Qwen 3 template), rendering tools (in the system turn), tool calls and tool results
# the way Qwen 2.5 does, so tool-calling data trains on the tiny model too
CHATML_WITH_GENERATION = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message['role'] == 'system' and tools and loop.first %}
{%- elif message['role'] == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- generation %}
{{- message['content'] or '' }}
{%- for call in message['tool_calls'] or [] %}
{%- set call = call['function'] if call['function'] is defined else call %}
{{- '<tool_call>\\n{"name": "' + call['name'] + '", "arguments": ' }}
{{- call['arguments'] | tojson }}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- endgeneration %}
{%- elif message['role'] == 'tool' %}
{{- '<|im_start|>tool\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def read_corpus(data_dir: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (data_dir / "tiny_corpus.jsonl").read_text().splitlines()]


def read_instructions(data_dir: Path) -> list[str]:
    """The instruction set as plain text: the tokenizer must know its words (the model never trains on them)."""
    rows = [json.loads(line) for line in (data_dir / "tiny_alpaca.jsonl").read_text().splitlines()]
    return [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + ["system user assistant You are a short, exact assistant."], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML_WITH_GENERATION, model_max_length=512)


def pretrain(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, texts: list[str], steps: int) -> float:
    """Full-parameter steps on random batches of the corpus; returns the last loss."""
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = tokenizer([t + tokenizer.eos_token for t in rng.sample(texts, 32)], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()


def main(data_dir: Path = Path("assets/data"), out: Path = Path("assets/tiny-llama"), steps: int = 600) -> None:
    torch.manual_seed(0)
    texts = read_corpus(data_dir)
    tokenizer = build_tokenizer(texts + read_instructions(data_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    loss = pretrain(model, tokenizer, texts, steps)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"tiny model: {model.num_parameters():,} params, pre-train loss {loss:.3f}, saved to {out}")


if __name__ == "__main__":
    main()
