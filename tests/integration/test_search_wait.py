"""`POST …/search?wait=`: the answer in the same request when the search ends within the wait
(200 and the finished job, as `GET /v1/jobs/{id}` shows it); else 202 as without `wait`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_id
from tests.integration.services import data_store, start_api, start_worker

ENV = {"RATE_LIMIT_PER_SECOND": "0"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """An API with a worker, and a second API whose broker no worker reads (its jobs never run)."""
    workdir: Path = tmp_path_factory.mktemp("search-wait")
    services = []
    with data_store(workdir, False) as url:
        try:
            services.append(start_worker(url, workdir, "wait", **ENV))
            api, base = start_api(url, workdir, **ENV)
            services.append(api)
            idle_broker = url.rsplit("/", 1)[0] + "/7"
            stalled, stalled_base = start_api(url, workdir, **ENV, BROKER_URL=idle_broker)
            services.append(stalled)
            with (
                httpx.Client(base_url=base, timeout=60) as live,
                httpx.Client(base_url=stalled_base, timeout=60) as idle,
            ):
                yield live, idle
        finally:
            for service in reversed(services):
                service.stop()


@pytest.fixture(scope="module")
def photos(stack) -> dict[str, str]:
    live, _ = stack
    job = index(live, "pics", [(f"p{i}.jpg", photo_bytes(i)) for i in range(6)])
    assert job["status"] == "succeeded"
    return {item["filename"]: item["image_id"] for item in job["result"]["items"]}


def test_search_by_id_with_wait_answers_in_one_request(stack, photos) -> None:
    live, _ = stack
    resp = live.post("/v1/collections/pics/search", params={"k": 3, "wait": 20}, json={"image_id": photos["p0.jpg"]})
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["status"] == "succeeded" and job["type"] == "search"
    # The same answer the two-request way gives.
    again = search_id(live, "pics", photos["p0.jpg"], k=3)
    assert [m["image_id"] for m in job["result"]["matches"]] == [m["image_id"] for m in again["result"]["matches"]]
    assert live.get(f"/v1/jobs/{job['job_id']}").json()["result"] == job["result"]


def test_an_uploaded_query_with_wait(stack, photos) -> None:
    live, _ = stack
    files = {"file": ("q.jpg", photo_bytes(2), "image/jpeg")}
    resp = live.post("/v1/collections/pics/search", params={"k": 1, "wait": 20, "min_similarity": 0}, files=files)
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["matches"][0]["image_id"] == photos["p2.jpg"]


def test_a_failed_search_is_answered_too(stack, photos) -> None:
    live, _ = stack
    resp = live.post(
        "/v1/collections/pics/search", params={"wait": 20, "cluster": 0}, json={"image_id": photos["p1.jpg"]}
    )
    # Not clustered: the API refuses at once (404), before any job.
    assert resp.status_code == 404 and resp.json()["error"] == "cluster_not_found"


def test_without_wait_or_past_it_the_answer_is_202(stack, photos) -> None:
    live, idle = stack
    plain = live.post("/v1/collections/pics/search", json={"image_id": photos["p3.jpg"]})
    assert plain.status_code == 202 and set(plain.json()) >= {"job_id", "status_url"}
    started = time.monotonic()
    late = idle.post("/v1/collections/pics/search", params={"wait": 0.5}, json={"image_id": photos["p3.jpg"]})
    took = time.monotonic() - started
    assert late.status_code == 202, late.text
    assert live.get(late.json()["status_url"]).json()["status"] == "queued"  # nothing ran it
    assert 0.5 <= took < 5, took  # waited the half second, then answered as without wait
    with pytest.raises(httpx.HTTPStatusError):
        live.post(
            "/v1/collections/pics/search", params={"wait": 31}, json={"image_id": photos["p3.jpg"]}
        ).raise_for_status()
