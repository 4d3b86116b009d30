# Two commands do all set-up on a fresh machine (python3 + pip only):
#   make demo   phantom data -> AEM shards -> pretrain/train/posttrain -> 15-subset table
#   make test   install and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: demo test install test-slow lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned, so pip takes the local CPU build instead of pulling CUDA wheels
$(VENV)/.installed: $(BIN)/python setup.cfg
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m pipelines.demo --out $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check aem_synth train tests benchmarks pipelines
	$(BIN)/mypy
