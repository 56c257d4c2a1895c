# Every target runs from a clean clone: `make install` is the only set-up step.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes for `make test`: the suite mostly waits on its servers, workers and receivers,
# so two share two cores well (tests/support.py `cores` keeps the tests that assert a time
# bound alone with them). Servers given by TEST_DATABASE_URL/TEST_REDIS_URL serve only one.
TEST_WORKERS ?= $(if $(TEST_DATABASE_URL)$(TEST_REDIS_URL),0,2)
PYTEST_XDIST := -n $(TEST_WORKERS)

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit test-integration lint format bench chaos clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the project and its dev dependencies

run: $(STAMP) ## Run the whole service (embedded PostgreSQL and Redis unless DATABASE_URL/REDIS_URL are set)
	$(BIN)/python -m scripts.run

test: $(STAMP) ## Run the whole test suite against real PostgreSQL, Redis, Celery and HTTP processes
	$(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-unit: $(STAMP) ## Run only the fast unit tests
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) ## Run only the integration tests
	$(BIN)/python -m pytest tests/integration $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## Format and autofix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## Run the benchmark suite (prints a table, writes benchmarks/results/latest.json)
	$(BIN)/python -m benchmarks.run

chaos: $(STAMP) ## Long mixed reliability run: kills workers, restarts Redis, prints lost/failed/duplicated
	$(BIN)/python -m scripts.chaos

clean: ## Remove .venv and ./var (all local data)
	rm -rf $(VENV) var
