# tlbench — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the releases this project is tested with (CUDA builds; they run on CPU too).
TORCH := torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist
FMNIST_RAW := data/FashionMNIST/raw
HYMENOPTERA := data/hymenoptera_data
HYMENOPTERA_ZIP := https://download.pytorch.org/tutorial/hymenoptera_data.zip
FMNIST_MISSING := Fashion-MNIST not found: put the four *-ubyte(.gz) files (github.com/zalandoresearch/fashion-mnist, \
data/fashion/) in $(FMNIST_RAW)/; online, tlbench.train downloads them (trying now)

.DEFAULT_GOAL := help
.PHONY: help install train test test-slow test-all lint deps-check format bench gpu-wheels gpu-check tensorboard clean quickstart-data hymenoptera-data

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

quickstart-data: ## Fashion-MNIST for the quickstart, offline and without root: Debian's package unpacked into data/
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif ls $(FMNIST_RAW)/train-images-idx3-ubyte* >/dev/null 2>&1; then echo "Fashion-MNIST: $(FMNIST_RAW)"; \
	elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then \
	  tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && apt-get download -q dataset-fashion-mnist >/dev/null) && \
	  dpkg-deb -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/x" && mkdir -p $(FMNIST_RAW) && \
	  cp "$$tmp"/x/usr/share/datasets/fashion-mnist/*-ubyte.gz $(FMNIST_RAW)/ && \
	  echo "Fashion-MNIST: Debian's package unpacked into $(FMNIST_RAW)" || \
	  echo "$(FMNIST_MISSING)"; \
	else echo "$(FMNIST_MISSING)"; fi

hymenoptera-data: ## the README's ants/bees images in data/hymenoptera_data (a copy in ../shared, else the tutorial's zip)
	@if [ -d $(HYMENOPTERA)/train ]; then echo "hymenoptera: $(HYMENOPTERA)"; \
	elif [ -d ../shared/data/hymenoptera/train ]; then mkdir -p data && ln -s "$$(cd ../shared/data/hymenoptera && pwd)" $(HYMENOPTERA) \
	  && echo "hymenoptera: $(HYMENOPTERA) -> ../shared/data/hymenoptera"; \
	else $(PYTHON) -c "import io, sys, urllib.request, zipfile; \
	zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(sys.argv[1], timeout=30).read())).extractall('data')" \
	  $(HYMENOPTERA_ZIP) 2>/dev/null && echo "hymenoptera: $(HYMENOPTERA) (from $(HYMENOPTERA_ZIP))" \
	  || { echo "hymenoptera: could not download $(HYMENOPTERA_ZIP); offline, copy its train/ and val/ folders to $(HYMENOPTERA)/"; exit 1; }; fi

train: install quickstart-data ## the offline quickstart: Lite0 (ImageNet weights from pip) on Fashion-MNIST, 1-channel, CPU
	$(PY) -m tlbench.train experiment=quickstart

test: install ## the fast tests (tiny models, no subprocess runs but the signal ones): minutes on 2 CPU cores
	$(PY) -m pytest -q -m "not slow and not gpu"

test-slow: install ## the slow tests only: real data, signals, launchers, kill-and-resume (what CI adds to make test)
	$(PY) -m pytest -q -m "slow and not gpu"

test-all: install ## every CPU test (make test + make test-slow)
	$(PY) -m pytest -q -m "not gpu"

lint: install ## ruff check + format check, import layering (lint-imports), declared dependencies (deptry)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry src

deps-check: install ## deptry + the wheel in a clean venv (core deps only): --help, a fast_dev_run (~5 min: installs torch)
	$(VENV)/bin/deptry src
	PYTHON=$(PYTHON) TORCH="$(TORCH)" scripts/check_wheel.sh

format: install ## ruff format + autofix
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: install ## notebook loop vs tlbench (the product path) vs the compute ceiling: full size on a GPU, --quick on CPU
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
	  $(PY) benchmarks/bench.py --out benchmarks/results.json; \
	else echo "no GPU: the reduced CPU workload (Lite0, 224 px; not the GPU targets)"; \
	  $(PY) benchmarks/bench.py --quick; fi

# What a bare GPU machine (PyTorch and its image, no internet) lacks of tlbench's imports, as wheels; versions as
# tested here. antlr4-python3-runtime has no wheel on PyPI: pip builds one (pure Python) from its sdist.
# setuptools: to build tlbench itself there without fetching a build backend (pyproject asks >= 68).
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 setuptools==75.3.0
GPU_CHECK_ARGS ?=

gpu-wheels: ## the wheels gpu-check installs offline where they are missing, into .whl/ (needs internet, here)
	rm -rf .whl/site
	$(PYTHON) -m pip wheel -q --no-deps -w .whl $(GPU_WHEELS)
	@ls .whl/*.whl

gpu-check: ## on one CUDA GPU, ≤ 8 min: graph vs eager, gpu tests, bench at full size → outputs/gpu_check/ (docs/GPU.md)
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

tensorboard: install ## TensorBoard over every run in outputs/
	$(VENV)/bin/tensorboard --logdir outputs/

clean: ## remove caches and build files (keeps .venv, data/ and outputs/)
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
