"""Fair shares with one worker (issue 21): while alice has five whole-collection batch searches
queued, bob's one-image upload and his search each finish within 10 s; a key past
MAX_OPEN_JOBS_PER_KEY gets 429 until one of its jobs ends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from api.auth import hash_key
from shared import keys
from tests.images import photo_bytes
from tests.integration.client_helpers import wait_job
from tests.integration.services import start_api, start_redis, start_worker

ALICE, BOB = "ssk_alice_fair_key", "ssk_bob_fair_key"
KEYS = json.dumps(
    [
        {"name": "alice", "sha256": hash_key(ALICE), "collections": ["alice-*"]},
        {"name": "bob", "sha256": hash_key(BOB), "collections": ["bob-*"]},
    ]
)
IMAGES = 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    workdir: Path = tmp_path_factory.mktemp("fair")
    redis_service, url = start_redis(workdir)
    worker = start_worker(url, workdir, "fair")
    env = {"API_KEYS": KEYS, "RATE_LIMIT_PER_SECOND": "0", "MAX_OPEN_JOBS_PER_KEY": "6"}
    api, base = start_api(url, workdir, **env)
    try:
        yield base, url
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()


def _as(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=60)


def test_another_tenants_small_work_is_not_queued_behind_a_big_backlog(stack: tuple[str, str]) -> None:
    base, url = stack
    with _as(base, ALICE) as alice, _as(base, BOB) as bob:
        photos = [("files", (f"a{i}.jpg", photo_bytes(26000 + i, size=(48, 40)), "image/jpeg")) for i in range(IMAGES)]
        first = alice.post("/v1/collections/alice-big/images", files=photos)
        assert wait_job(alice, first.json()["job_id"])["status"] == "succeeded"
        bob_photo = photo_bytes(26999, size=(48, 40))
        seed = bob.post("/v1/collections/bob-pets/images", files=[("files", ("b0.jpg", bob_photo, "image/jpeg"))])
        assert wait_job(bob, seed.json()["job_id"])["status"] == "succeeded"

        # Five batch searches of 300 uploaded queries each: 1,500 forward passes queued (~48 chunks).
        queries = [("files", (f"q{i}.jpg", photo_bytes(28000 + i, size=(48, 40)), "image/jpeg")) for i in range(300)]
        backlog = [
            alice.post("/v1/collections/alice-big/search/batch", params={"k": 5}, files=queries).json()["job_id"]
            for _ in range(5)
        ]
        r = redis.Redis.from_url(url)
        queued = sum(r.llen(q) for q in ["index", *(f"index:{p}" for p in range(1, 10))])
        assert queued > 20, "alice's backlog should be queued"

        started = time.monotonic()
        upload = bob.post(
            "/v1/collections/bob-pets/images",
            files=[("files", ("b1.jpg", photo_bytes(26998, size=(48, 40)), "image/jpeg"))],
        )
        job = wait_job(bob, upload.json()["job_id"], timeout=60)
        upload_s = time.monotonic() - started
        assert job["status"] == "succeeded"
        started = time.monotonic()
        search = bob.post(
            "/v1/collections/bob-pets/search", params={"k": 1}, files={"file": ("q.jpg", bob_photo, "image/jpeg")}
        )
        found = wait_job(bob, search.json()["job_id"], timeout=60)
        search_s = time.monotonic() - started
        assert found["status"] == "succeeded"
        print(f"bob's upload {upload_s:.1f} s, search {search_s:.1f} s behind alice's backlog")
        assert upload_s < 10 and search_s < 10
        assert any(alice.get(f"/v1/jobs/{j}").json()["status"] not in ("succeeded", "failed") for j in backlog)
        for job_id in backlog:  # alice's work still all ends
            assert wait_job(alice, job_id, timeout=300)["status"] == "succeeded"


def test_a_key_past_its_open_jobs_quota_gets_429(stack: tuple[str, str]) -> None:
    base, url = stack
    client = redis.Redis.from_url(url)
    now = time.time()
    client.zadd(keys.owner_open("key:bob"), {f"fake{i}": now for i in range(6)})  # bob has six jobs open
    client.zadd(keys.owner_open("key:bob"), {"expired": now - 8 * 24 * 3600})  # one expired long ago: not counted
    try:
        with _as(base, BOB) as bob:
            resp = bob.post(
                "/v1/collections/bob-pets/images", files=[("files", ("x.jpg", photo_bytes(1), "image/jpeg"))]
            )
            assert resp.status_code == 429 and resp.json()["error"] == "too_many_jobs"
            assert "MAX_OPEN_JOBS_PER_KEY=6" in resp.json()["detail"] and resp.headers["retry-after"] == "5"
            with _as(base, ALICE) as alice:  # another key is not held back by bob's
                ok = alice.post(
                    "/v1/collections/alice-x/images", files=[("files", ("y.jpg", photo_bytes(2), "image/jpeg"))]
                )
                assert ok.status_code == 202
    finally:
        client.delete(keys.owner_open("key:bob"))


def test_finished_jobs_leave_their_owners_count(stack: tuple[str, str]) -> None:
    base, url = stack
    with _as(base, BOB) as bob:
        for i in range(3):
            resp = bob.post(
                "/v1/collections/bob-count/images",
                files=[("files", (f"c{i}.jpg", photo_bytes(27000 + i), "image/jpeg"))],
            )
            assert wait_job(bob, resp.json()["job_id"])["status"] == "succeeded"
    assert redis.Redis.from_url(url).zcard(keys.owner_open("key:bob")) == 0
