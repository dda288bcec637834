# Every target creates and uses its own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-compiled system-packages autobahn lint bench docs clean

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
	$(MAKE) test-compiled

# The build users install (setup.py compiles the request path with mypyc; the editable .venv is pure Python):
# built as a wheel, installed into build/compiled, which goes first on the path, and tested there: the unit
# tests and the integration tests of the request path.
COMPILED := build/compiled
COMPILED_TESTS := tests/unit tests/integration/test_http_*.py tests/integration/test_websocket.py \
	tests/integration/test_wsgi.py tests/integration/test_sendfile.py tests/integration/test_slow_readers.py \
	tests/integration/test_hostile_clients.py tests/integration/test_corpus.py tests/integration/test_drain.py \
	tests/integration/test_frameworks.py tests/integration/test_proxy_protocol.py

test-compiled: $(BIN)/corral
	rm -rf $(COMPILED) build/wheel
	$(BIN)/python -m pip wheel -q --no-deps --wheel-dir build/wheel .
	$(BIN)/python -m pip install -q --no-deps --target $(COMPILED) build/wheel/corral-*.whl
	PYTHONPATH=$(COMPILED) CORRAL_EXPECT_COMPILED=1 $(BIN)/python -m pytest -n 2 -p no:cacheprovider \
		--deselect tests/unit/test_config.py::test_committed_docs_page_is_up_to_date $(COMPILED_TESTS)

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
