# pelagos — one command sets up and runs the flagship demo (`make demo`), one sets up and runs the tests (`make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 lies on this machine's disk; installing it first keeps pip from pulling a
# multi-GB CUDA build to satisfy pyproject's looser range. Override with `make TORCH_SPEC=torch install`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-all: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "slow or not slow"

demo: install
	$(BIN)/python examples/demo.py

bench: install
	$(BIN)/python benchmarks/run_all.py

lint: install
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/ruff format --check src tests benchmarks examples scripts

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache results
