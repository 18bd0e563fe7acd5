# Keel's two set-up commands are `make run` and `make test`; everything else is a step of theirs.
VENV    ?= .venv
PY      := $(VENV)/bin/python
BUF     := node_modules/.bin/buf
PROTOS  := $(shell find protos -name '*.proto' | sort)
PYTHON  ?= python3

.PHONY: run test gen check-gen lint typecheck pytest conformance install clean-var


## run: create .venv if missing, install Keel, and run every service in one process.
run: $(VENV)/.installed
	$(VENV)/bin/keel serve all

## test: install dev tools, lint (ruff, buf), check gen/ is fresh, type-check, run pytest.
test: $(VENV)/.installed node_modules/.installed lint check-gen typecheck pytest

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml sdk/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e sdk/python
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# protoc writing Python, .pyi stubs and typed gRPC stubs into the directory $(1).
protoc = $(PY) -m grpc_tools.protoc -Iprotos \
	--python_out=$(1) --pyi_out=$(1) --grpc_python_out=$(1) \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=$(1) \
	$(PROTOS)

## gen: regenerate gen/ from protos/ (never edit gen/ by hand).
gen: $(VENV)/.installed
	rm -rf gen/keel
	$(call protoc,gen)

## check-gen: fail when gen/ differs from what `make gen` would write.
check-gen: $(VENV)/.installed
	@rm -rf .gen-check && mkdir -p .gen-check
	@$(call protoc,.gen-check)
	@if diff -r -x __pycache__ .gen-check/keel gen/keel >/dev/null; then \
		rm -rf .gen-check; echo "gen/ is up to date"; \
	else \
		diff -r -q -x __pycache__ .gen-check/keel gen/keel; rm -rf .gen-check; \
		echo "gen/ is stale: run 'make gen' and commit the result" >&2; exit 1; \
	fi

lint: $(VENV)/.installed node_modules/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy keel_app service_kit tenant_service gateway_bridge notification_service file_service

# The whole suite runs as two pytest processes at once: tests/e2e (which mostly waits on
# the keel processes it starts) beside the rest, each on its own PostgreSQL database; the
# e2e run's output follows the other's. With PYTEST_ARGS (a subset), one process runs them.
# The slowest tests are listed at the end of each run: CI has a 15-minute budget.
pytest: $(VENV)/.installed
ifeq ($(strip $(PYTEST_ARGS)),)
	@mkdir -p var
	@$(VENV)/bin/pytest -p no:cacheprovider --durations=15 tests/e2e > var/pytest-e2e.log 2>&1 & \
	e2e=$$!; \
	$(VENV)/bin/pytest --durations=20 --ignore=tests/e2e; rest=$$?; \
	wait $$e2e; e2e_rc=$$?; \
	echo "== tests/e2e (run beside the rest; var/pytest-e2e.log) =="; cat var/pytest-e2e.log; \
	echo "== pytest: tests/e2e exit $$e2e_rc, the rest exit $$rest =="; \
	test $$rest -eq 0 -a $$e2e_rc -eq 0
else
	$(VENV)/bin/pytest --durations=25 $(PYTEST_ARGS)
endif

## conformance: all 517 Autobahn WebSocket cases against the bridge, compression too (~6 min;
## `make test` runs all but the larger compression cases); tables in var/conformance/.
conformance: $(VENV)/.installed
	KEEL_CONFORMANCE=full KEEL_CONFORMANCE_REPORT=var/conformance \
		$(VENV)/bin/pytest tests/gateway_bridge/bridge/test_conformance.py $(PYTEST_ARGS)

clean-var:
	rm -rf var

# make bench / make bench-full (see bench/README.md).
include bench/Makefile.inc
