# Two commands do all set-up and run (README):
#   make demo   — install the core into .venv and segment the example image with the shipped default model
#   make test   — install everything into .venv (all extras, dev tools) and run lint, types and the whole test suite
# Versions are pinned exactly by constraints/*.txt (pyproject.toml has lower bounds only); `make lock` renews them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_VERSION := 26.3

.PHONY: demo test install install-dev lint lock

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)

# The core only (what `segany segment` needs). A .venv without torch gets the small CPU build of torch 2.13.0
# (constraints/demo.txt); a .venv that has a torch keeps it (constraints/core.txt), e.g. after `make test`.
install: $(BIN)/python
	@if $(BIN)/pip show -q torch >/dev/null 2>&1; then pins=constraints/core.txt; else pins=constraints/demo.txt; fi; \
	echo "$(BIN)/pip install -q -e . -c $$pins"; $(BIN)/pip install -q -e . -c $$pins

# Everything: all extras, the test tools and the test oracles (torch 2.14.1 + torchvision 0.29.1; sam2 without
# its optional CUDA extension, which image-mode parity does not use).
install-dev: $(BIN)/python
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q -e '.[dev]' -c constraints/dev.txt

demo: install
	$(BIN)/segany segment examples/dog_cat.jpg --point 160,185 --out out/demo

lint: install-dev
	$(BIN)/ruff check segany tests benchmarks
	$(BIN)/ruff format --check segany tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -n 2 --durations=15

lock: $(BIN)/python
	$(BIN)/python constraints/lock.py
