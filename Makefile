# Every set-up step lives here: `make quickstart` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
UNSLOTH_VERSION := 2026.10.9
AXOLOTL_VERSION := 0.19.0
STAMP := $(VENV)/.installed
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.DEFAULT_GOAL := help
.PHONY: help setup quickstart test lint clean assets gpu-check bench-gpu-presets bench-smoke

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install everything (quick when already done)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build where a CPU wheel is at hand
	$(PY) -m pip install -q torch==2.13.0
ifeq ($(HAS_CUDA),1)
	$(PY) -m pip install -q -e ".[gpu,optuna,slurm,dev]"
else
	$(PY) -m pip install -q -e ".[unsloth-cpu,optuna,slurm,dev]"
	# Unsloth's CPU backend: without its GPU-only dependencies, which cannot install or run here
	$(PY) -m pip install -q --no-deps unsloth==$(UNSLOTH_VERSION) unsloth_zoo==$(UNSLOTH_VERSION)
endif
	# test fixtures, not installed: the models' published chat templates (Mistral v0.3 / NeMo, Gemma 2) as axolotl ships them
	$(PY) -m pip download -q --no-deps --dest $(VENV)/published axolotl==$(AXOLOTL_VERSION)
	# llama.cpp's HF -> GGUF converter, from PyPI (export.format=gguf); a failed download only warns
	$(PY) tools/get_llama_cpp.py --optional
	touch $(STAMP)

quickstart: setup ## fine-tune the tiny offline model on CPU and print the summary
	$(PY) -m pipeline.train experiment=quickstart

test: setup ## run the whole test suite (configs, units, end to end), two workers
	$(PY) -m pytest -q -n 2 --dist worksteal

gpu-check: setup ## on a CUDA machine: quickstart, then a random-weight 1B model per preset (docs/gpu.md)
	$(PY) benchmarks/gpu_check.py

bench-gpu-presets: setup ## on a CUDA machine: every target preset x both backends, random 1B and 8B (docs/gpu.md)
	$(PY) benchmarks/gpu_presets.py

bench-smoke: setup ## the same benchmark on CPU at tiny size, 3 steps a run (a few minutes; CI runs it after the tests)
	$(PY) benchmarks/gpu_presets.py --size tiny

lint: setup ## ruff
	$(PY) -m ruff check pipeline tests tools benchmarks hydra_plugins

assets: setup ## rebuild the shipped tiny model and sample data (deterministic)
	$(PY) tools/make_tiny_data.py
	$(PY) tools/make_tiny_model.py

clean: ## remove run outputs (keeps .venv)
	rm -rf outputs multirun wandb _unsloth_sentencepiece_temp unsloth_compiled_cache
