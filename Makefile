# Tradedesk — the two commands: `make run` and `make test`. Both bootstrap from a fresh clone.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
AUDIT_ARGS ?=

.PHONY: help install run test bench loadtest lint fmt audit migrate clean

help:
	@echo "make run    - bootstrap (venv, deps, .env, database, migrations) and serve on http://127.0.0.1:8000"
	@echo "make test   - bootstrap and run the test suite against a real PostgreSQL (and Redis if REDIS_URL)"
	@echo "make bench  - run the benchmarks and print the figures recorded in docs/performance.md"
	@echo "make loadtest - the mixed workload at 1,000 req/s for 60 s on python -m app (2 workers), then its knee"
	@echo "make lint   - ruff check, ruff format --check, mypy (strict on app/core and app/quant)"
	@echo "make fmt    - ruff format and the safe ruff fixes"
	@echo "make audit  - bandit over app/ and pip-audit over the installed environment (see docs/security.md)"
	@echo "make migrate - alembic upgrade head against DATABASE_URL"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools  # a 3.11 venv starts with setuptools 65.5, which has advisories
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python scripts/dev.py run

test: install
	$(BIN)/python scripts/dev.py test -- $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run.py $(BENCH)

LOADTEST_ARGS ?=
loadtest: install
	$(BIN)/python bench/loadtest.py $(LOADTEST_ARGS)

LINT_PATHS := app tests scripts bench migrations

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

# Fails on any bandit finding and on any known-vulnerable dependency; a dependency that could not be
# audited fails too (pip-audit --strict, then the fallback of scripts/audit_deps.py).
audit: install
	$(BIN)/bandit -q -c pyproject.toml -r app
	$(BIN)/python scripts/audit_deps.py $(AUDIT_ARGS)

migrate: install
	$(BIN)/alembic upgrade head

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
