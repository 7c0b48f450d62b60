# The README's two commands: `make serve` and `make test`. Both make .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck pytest install-runtime install-dev models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@ $(VENV)/.runtime

install-runtime: $(VENV)/.runtime
install-dev: $(VENV)/.dev

serve: $(VENV)/.runtime
	$(BIN)/lstm-serve serve --host $(HOST) --port $(PORT)

models: $(VENV)/.runtime
	$(BIN)/lstm-serve models

lint: $(VENV)/.dev
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests

typecheck: $(VENV)/.dev
	$(BIN)/mypy service tests

pytest: $(VENV)/.dev
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
