# The two fresh-machine commands:
#   make run   — install into .venv and run the end-to-end demo (gigafactory demo)
#   make test  — install the dev extras into .venv, lint, and run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: run test install install-dev system lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip

install: $(BIN)/python
	$(PIP) -e .

install-dev: $(BIN)/python system
	$(PIP) -e '.[dev]'

# Debian packages the tests start for real (chromium, nats-server, slurm, munge); idempotent.
system:
	bash scripts/install-system.sh

run: install
	$(BIN)/gigafactory demo

LINT_PATHS := src tests $(wildcard bench)

lint: install-dev
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

test: install-dev lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
