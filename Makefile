# The two fresh-machine commands:
#   make run   — install into .venv and run the end-to-end demo (gigafactory demo)
#   make test  — install the dev extras into .venv, lint, and run the test suite
#   (CI then runs `make test-scaleout`: real Slurm and NATS JetStream clusters on loopback)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: run test test-scaleout install install-dev system lint bench clean

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

# the real Slurm / NATS clusters (tests/scaleout, marker `scaleout`) run in their own step
test: install-dev lint
	$(BIN)/python -m pytest -q -m "not scaleout"

test-scaleout: install-dev
	$(BIN)/python -m pytest -q -m scaleout --timeout 900 tests/scaleout

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
