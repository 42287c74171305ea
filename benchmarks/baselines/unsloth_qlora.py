"""Hand-written QLoRA SFT with Unsloth + TRL: the work `pipeline.train experiment=quickstart` (backend=unsloth) does,
written the way Unsloth's notebooks do it (benchmarks/overhead.py times the two).

Run: python benchmarks/baselines/unsloth_qlora.py OUT_DIR [STEPS]   (prints one JSON line: the loss at every step)
"""

import json  # noqa: I001 - unsloth goes before transformers, peft and trl, as Unsloth asks: it patches them
import sys

import unsloth  # noqa: F401
import torch
from datasets import load_dataset
from transformers import BitsAndBytesConfig, set_seed
from trl import SFTConfig, SFTTrainer
from unsloth import FastLanguageModel

MODEL, DATA, SEED = "assets/tiny-llama", "assets/data/tiny_messages.jsonl", 3407
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main(out: str, steps: int) -> None:
    dataset = load_dataset("json", data_files=DATA, split="train")
    set_seed(SEED)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=MODEL, max_seq_length=256, dtype=torch.float32,
                                                         load_in_4bit=True, quantization_config=quantization,
                                                         random_state=SEED)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0.0, bias="none",
                                             target_modules=PROJECTIONS, use_gradient_checkpointing="unsloth",
                                             random_state=SEED, max_seq_length=256)
    args = SFTConfig(output_dir=f"{out}/checkpoints", learning_rate=5e-3, max_steps=steps,
                     per_device_train_batch_size=4, gradient_accumulation_steps=1, warmup_steps=0.1,
                     lr_scheduler_type="linear", weight_decay=0.01,
                     optim="adamw_torch", max_grad_norm=1.0, logging_steps=1, logging_first_step=True,
                     save_steps=10, save_total_limit=2, seed=SEED, data_seed=SEED, bf16=False, fp16=False,
                     gradient_checkpointing=False, report_to="none", max_length=256, assistant_only_loss=True)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=dataset)
    for param in trainer.model.parameters():  # TRL casts a quantized model's adapters to bf16: train them in fp32
        if param.requires_grad:
            param.data = param.data.float()
    trainer.train()
    trainer.save_model(f"{out}/adapter")
    print(json.dumps({"losses": [round(r["loss"], 6) for r in trainer.state.log_history if "loss" in r]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60)
