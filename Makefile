# The same commands run locally and in CI.
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = "0" ] || echo sudo)
# Installs happen once per Python environment, and again only when the dependency lists change.
# The environment is its prefix and its interpreter's inode: a virtualenv made again at the same
# path is a new environment.
ENV_ID := $(shell $(PYTHON) -c 'import hashlib, os, sys; key = f"{sys.prefix}:{os.lstat(sys.executable).st_ino}"; print(hashlib.sha1(key.encode()).hexdigest()[:12])')
STAMPS := .make/$(ENV_ID)

.PHONY: install install-dev browser run test test-unit test-integration test-cluster lint format

install: $(STAMPS)/run  ## what running needs: redis-server from apt, the api, worker and client extras

install-dev: $(STAMPS)/dev  ## what the tests and linters need too: the dev extra

browser:  ## Debian's chromium, for the gallery's browser tests
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

$(STAMPS)/run: pyproject.toml constraints.txt
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server redis-tools)
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[api,worker,client]"
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/dev: $(STAMPS)/run
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

run: install  ## redis, one worker and the API on 127.0.0.1:8000, without Docker (HOST=0.0.0.0 to listen on every address)
	PYTHON=$(PYTHON) ./infra/run-local.sh

test: install-dev browser  ## unit + integration tests (starts its own redis-server and Celery workers)
	$(PYTHON) -m pytest -q

test-unit: install-dev
	$(PYTHON) -m pytest -q tests/unit

test-integration: install-dev browser
	$(PYTHON) -m pytest -q tests/integration

# The suites of indexing, search, delete, shards, batch, filters, re-embed, export, imports, jobs and
# the interleavings again, with every service's data on a Redis Cluster (3 primaries, 3 replicas) and
# a broker of its own (tests/integration/services.py: data_store).
CLUSTER_SUITES = test_service test_filters test_clusters_export test_gallery test_operations test_cli \
	test_long_poll test_http_errors test_cancel test_imports test_growing_jobs test_growing_batch \
	test_quota_races test_shards test_duplicates test_no_match test_model_switch test_reliability \
	test_abuse test_shard_steps test_job_races test_replica_ann test_migrate
test-cluster: install-dev browser
	SIMSEARCH_TEST_REDIS=cluster $(PYTHON) -m pytest -q $(CLUSTER_SUITES:%=tests/integration/%.py)

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: install-dev
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
