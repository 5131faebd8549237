# Two commands do all set-up and run (README):
#   make demo   — install into .venv and segment the example image with the shipped default model
#   make test   — install into .venv (with dev tools) and run lint, types and the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

demo: install
	$(BIN)/segany segment examples/dog_cat.jpg --point 160,185 --out out/demo

lint: install-dev
	$(BIN)/ruff check segany tests benchmarks
	$(BIN)/ruff format --check segany tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -n 2 --durations=15
