# ipsecd: the two commands are `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: deps test lint typecheck unit demo bench clean

deps:
	VENV=$(VENV) ./deploy/scripts/install-deps.sh

## The whole suite: lint, types, unit, interop and namespace tests.
test: deps
	$(PY) -m ruff check ipsecd workers metrics tests
	$(PY) -m mypy
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: deps
	$(PY) -m ruff check ipsecd workers metrics tests

typecheck: deps
	$(PY) -m mypy

## The demo: two gateways in network namespaces (see README.md).
demo: deps
	$(PY) deploy/demo/demo.py $(DEMO_ARGS)

bench: deps
	$(PY) -m ipsecd.bench codec

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
