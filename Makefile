# The same commands run locally and in CI.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
# Installs happen once per Python environment, and again only when the dependency lists change.
ENV_ID := $(shell $(PYTHON) -c 'import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:12])')
STAMPS := .make/$(ENV_ID)

.PHONY: install install-dev run test test-unit test-integration lint format

install: $(STAMPS)/run  ## what running needs: redis-server from apt, the api, worker and client extras

install-dev: $(STAMPS)/dev  ## what the tests need too: chromium from apt, the dev extra

$(STAMPS)/run: pyproject.toml constraints.txt
	@command -v redis-server >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server)
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[api,worker,client]"
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/dev: $(STAMPS)/run
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

run: install  ## redis, one worker and the API on 127.0.0.1:8000, without Docker (HOST=0.0.0.0 to listen on every address)
	PYTHON=$(PYTHON) ./infra/run-local.sh

test: install-dev  ## unit + integration tests (starts its own redis-server and Celery workers)
	$(PYTHON) -m pytest -q

test-unit: install-dev
	$(PYTHON) -m pytest -q tests/unit

test-integration: install-dev
	$(PYTHON) -m pytest -q tests/integration

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: install-dev
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
