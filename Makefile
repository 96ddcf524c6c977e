# The two commands of the README: `make run` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.toml

.PHONY: run demo test lint services bench install clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "trial watcher needs Python 3.11 or newer ($(PYTHON) is older); use make PYTHON=python3.12"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	@touch $@

install: $(VENV)/.installed

# The main job: the daemon on the example config (Ctrl-C stops it cleanly).
run: install
	$(BIN)/watcher --config $(CONFIG) daemon

# The daemon against the project's fake API on 127.0.0.1 (no internet needed).
demo: install
	$(BIN)/python -m tests.support.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The servers the tests start themselves (PostgreSQL, Chromium): installed with apt where missing and possible.
services:
	@bash .ci/install-services

# One pytest worker per core (at most 4: each may start its own PostgreSQL and Chromium); worksteal keeps
# both busy while one runs the minute-long benchmark smoke test. `pytest -m "not slow"` is the quick loop.
test: lint services
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal

bench: install services
	$(BIN)/python bench/run.py
	$(BIN)/python bench/store.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
