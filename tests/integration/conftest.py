from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.services import ON_CLUSTER, Service, data_client, data_store, start_api, start_worker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # The TTL audit reads what every other test left in the shared Redis: it runs last, whatever
    # the files are called or the order they are given in.
    audits = [i for i in items if i.get_closest_marker("runs_last")]
    items[:] = [i for i in items if not i.get_closest_marker("runs_last")] + audits


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    with data_store(workdir, ON_CLUSTER) as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return data_client(redis_url)


@pytest.fixture(scope="session")
def workers(redis_url: str, workdir: Path) -> Iterator[list[Service]]:
    """Two real Celery workers (random-weight ResNet50: plumbing, not quality)."""
    started = [start_worker(redis_url, workdir, "w1"), start_worker(redis_url, workdir, "w2")]
    yield started
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def api_service(redis_url: str, workdir: Path, workers: list[Service]) -> Iterator[tuple[Service, str]]:
    service, base = start_api(redis_url, workdir, MAX_REQUEST_BYTES=str(64 * 1024 * 1024))
    yield service, base
    service.stop()


@pytest.fixture(scope="session")
def api_url(api_service: tuple[Service, str]) -> str:
    return api_service[1]


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60) as c:
        yield c


@pytest.fixture
def collection() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
