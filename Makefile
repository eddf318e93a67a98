# One place for the commands people, the README and CI run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Locked, hashed dependency sets (docs/install.md): dev.txt for setup/CI, runtime.txt and
# build.txt for the image. Resolved once for every platform and CPython 3.11+.
LOCKS := requirements/dev.txt requirements/runtime.txt requirements/build.txt
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command 'make lock'

.PHONY: setup demo test test-quick lint bench bench-smoke clean lock lock-upgrade

# The locked set first (every file checked against its hash), then the project alone.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/orderwatch demo

# Two worker processes (pytest-xdist; TEST_JOBS=1 for one): most tests wait on children and
# real-time windows, so two take a little over half the time of one, even on two cores. The
# tests marked serial (what a server saw in a time window) run after, alone.
TEST_JOBS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_JOBS) --dist worksteal

test: $(STAMP)
	$(PYTEST) -m "not serial"
	$(BIN)/pytest -m serial

# The tests not marked slow (child processes, real-time waits, rate windows): for the edit-
# and-test loop. pytest's header says how many it selected and left out; `make test` runs all.
test-quick: $(STAMP)
	@echo 'test-quick: the tests not marked slow; `make test` runs every one'
	$(PYTEST) -m "not slow and not serial"
	$(BIN)/pytest -m "serial and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check daemon tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

# Re-resolve after a change to pyproject.toml's dependencies, keeping every pin that still
# fits; lock-upgrade moves every pin to the newest release in range. dev.txt comes first and
# bounds the others, so the image ships the versions that CI tested.
lock: $(STAMP)
	$(BIN)/uv pip compile $(LOCK_FLAGS) $(UPGRADE) pyproject.toml requirements/build.in \
		--extra dev --extra postgres --extra examples --extra bench -o requirements/dev.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) $(UPGRADE) pyproject.toml --extra postgres \
		-c requirements/dev.txt -o requirements/runtime.txt
	$(BIN)/uv pip compile $(LOCK_FLAGS) $(UPGRADE) requirements/build.in \
		-c requirements/dev.txt -o requirements/build.txt

lock-upgrade:
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info
