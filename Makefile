# Two commands for a new user (see README.md):
#   make quickstart   set everything up, then run the main job on the embedded default
#   make test         set everything up, then run every test suite (unit, integration, slow)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup quickstart test unit lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU wheel of torch 2.13.0 (a looser spec can pull a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(BIN)/deepsad sweep submit sweeps/quickstart.yaml
	$(BIN)/deepsad results show quickstart --top 5

test: setup
	$(BIN)/python -m pytest -m "not gpu"

unit: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check deepsad orchestration tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) runs .pytest_cache
