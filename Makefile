# One place for the commands people, the README and CI run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-quick lint bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,postgres]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/orderwatch demo

test: $(STAMP)
	$(BIN)/pytest

# The tests not marked slow (child processes, real-time waits, rate windows): for the edit-
# and-test loop. pytest's header says how many it selected and left out; `make test` runs all.
test-quick: $(STAMP)
	@echo 'test-quick: the tests not marked slow; `make test` runs every one'
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info
