# The same commands run locally and in CI.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)

.PHONY: install run test test-unit test-integration lint format bench-quality

install:  ## redis-server from apt, the package with every extra
	@command -v redis-server >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server)
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"

run: install  ## the whole stack on this machine, without Docker: redis, one worker, the API on :8000
	./infra/run-local.sh

test: install  ## unit + integration tests (starts its own redis-server and Celery workers)
	$(PYTHON) -m pytest -q

test-unit:
	$(PYTHON) -m pytest -q tests/unit

test-integration:
	$(PYTHON) -m pytest -q tests/integration

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
