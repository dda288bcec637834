# Every target creates and uses its own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test system-packages autobahn lint bench docs clean

$(BIN)/corral: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(BIN)/corral
	$(BIN)/corral examples.hello:app

# Debian packages that some tests use as real neighbours; tests skip with a reason where they are missing.
system-packages:
	bash scripts/install-system-packages

test: $(BIN)/corral system-packages
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m corral.docs --check
	$(BIN)/python -m pytest -n 2

# Autobahn|Testsuite's fuzzingclient against corral (tests/autobahn/run.py); skipped without CPython 2.7.
autobahn: $(BIN)/corral
	$(BIN)/python tests/autobahn/run.py

lint: $(BIN)/corral
	$(BIN)/ruff check .

docs: $(BIN)/corral
	$(BIN)/python -m corral.docs

bench: $(BIN)/corral
	bench/run

clean:
	rm -rf $(VENV) bench/.venv .autobahn
