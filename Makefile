# The README's commands. `make run` starts the service on its embedded default, with the sandbox;
# `make test` runs every check (lint, types, the test suite on PostgreSQL: the system server when it
# answers, else the embedded one).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# With no Slack or IdP configured, the service also serves its local sandbox at /sandbox.
run: $(STAMP)
	$(BIN)/approvals serve --sandbox=auto

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy approvals app

pytest: $(STAMP)
	$(BIN)/python -m pytest -n auto -q

bench: $(STAMP)
	$(BIN)/python bench/intake.py

clean:
	rm -rf $(VENV) var
