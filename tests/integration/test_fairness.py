"""Fair shares with one worker (issue 21): while alice has five whole-collection batch searches
queued, bob's one-image upload and his search each finish within 10 s; a key past
MAX_OPEN_JOBS_PER_KEY, MAX_QUEUED_ITEMS_PER_KEY or MAX_RESULT_BYTES_PER_KEY gets 429 until its
jobs progress, end or are deleted."""

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

ALICE, BOB, CAROL = "ssk_alice_fair_key", "ssk_bob_fair_key", "ssk_carol_fair_key"
KEYS = json.dumps(
    [
        {"name": "alice", "sha256": hash_key(ALICE), "collections": ["alice-*"]},
        {"name": "bob", "sha256": hash_key(BOB), "collections": ["bob-*"]},
        {"name": "carol", "sha256": hash_key(CAROL), "collections": ["carol-*"]},
    ]
)
IMAGES = 600
QUEUED_ITEMS, RESULT_BYTES = 2000, 2_000_000  # alice's 600 + 1,500 queries fit one after another


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    workdir: Path = tmp_path_factory.mktemp("fair")
    redis_service, url = start_redis(workdir)
    worker = start_worker(url, workdir, "fair")
    env = {
        "API_KEYS": KEYS,
        "RATE_LIMIT_PER_SECOND": "0",
        "MAX_OPEN_JOBS_PER_KEY": "6",
        "MAX_QUEUED_ITEMS_PER_KEY": str(QUEUED_ITEMS),
        "MAX_RESULT_BYTES_PER_KEY": str(RESULT_BYTES),
    }
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


def _files(n: int, seed: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"q{seed + i}.jpg", photo_bytes(seed + i, size=(40, 32)), "image/jpeg")) for i in range(n)]


def test_a_key_past_its_queued_items_quota_gets_429(stack: tuple[str, str]) -> None:
    base, url = stack
    client = redis.Redis.from_url(url)
    # carol has a job open with 1,990 items of which none is done (written as the API writes one)
    client.hset(keys.job("carolbusy"), mapping={"total": 1990, "done": 0})
    client.zadd(keys.owner_open("key:carol"), {"carolbusy": time.time()})
    try:
        with _as(base, CAROL) as carol:
            over = carol.post("/v1/collections/carol-q/images", files=_files(11, 31000))
            assert over.status_code == 429 and over.json()["error"] == "too_many_items", over.text
            assert "1,990 items of yours are queued and this request adds 11" in over.json()["detail"]
            assert "MAX_QUEUED_ITEMS_PER_KEY=2,000" in over.json()["detail"]
            urls = carol.post(
                "/v1/collections/carol-q/imports", json={"urls": [f"https://e.com/{i}.jpg" for i in range(11)]}
            )
            assert urls.status_code == 429 and urls.json()["error"] == "too_many_items"
            listing = "\n".join(f"https://e.com/{i}.jpg" for i in range(20)).encode()
            as_text = carol.post(
                "/v1/collections/carol-q/imports", content=listing, headers={"content-type": "text/plain"}
            )
            assert as_text.status_code == 429 and as_text.json()["error"] == "too_many_items"  # lines counted
            fits = carol.post("/v1/collections/carol-q/images", files=_files(10, 31000))
            assert fits.status_code == 202  # exactly up to the quota
            assert wait_job(carol, fits.json()["job_id"])["status"] == "succeeded"
            client.hset(keys.job("carolbusy"), "done", 1000)  # her big job progresses: room again
            assert carol.post("/v1/collections/carol-q/images", files=_files(11, 31100)).status_code == 202
    finally:
        client.delete(keys.job("carolbusy"))
        client.zrem(keys.owner_open("key:carol"), "carolbusy")


def test_batch_results_count_against_their_key_until_deleted(stack: tuple[str, str]) -> None:
    base, url = stack
    client = redis.Redis.from_url(url)
    spent = keys.owner_results("key:carol")
    with _as(base, CAROL) as carol, _as(base, BOB) as bob:
        seed = carol.post("/v1/collections/carol-r/images", files=_files(12, 32000))
        assert wait_job(carol, seed.json()["job_id"])["status"] == "succeeded"
        ids = [i["image_id"] for i in carol.get("/v1/collections/carol-r/images").json()["images"]]
        assert len(ids) == 12
        # k=1000 for 12 queries reserves 12,000 matches (~1.3 MB) until the job has measured its rows
        first = carol.post("/v1/collections/carol-r/search/batch", params={"k": 1000}, json={"image_ids": ids})
        assert first.status_code == 202, first.text
        first_id = first.json()["job_id"]
        assert client.zscore(spent, first_id) == 12 * 1000 * 110
        assert wait_job(carol, first_id)["status"] == "succeeded"
        measured = client.zscore(spent, first_id)
        assert measured == client.memory_usage(keys.job_results(first_id), samples=0)
        assert 0 < measured < 100_000  # 12 rows of 12 matches, not the reservation

        # Another finished batch of hers holding 1.99 MB: her next batch search is refused ...
        client.hset(keys.job("carolbig"), mapping={"type": "batch_search", "owner": "key:carol"})
        client.zadd(spent, {"carolbig": 1_990_000})
        try:
            refused = carol.post("/v1/collections/carol-r/search/batch", json={"image_ids": ids[:1]})
            assert refused.status_code == 429 and refused.json()["error"] == "too_many_results", refused.text
            assert "MAX_RESULT_BYTES_PER_KEY=2.0 MB" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "60"
            # ... while another key's is not, and neither are her uploads
            bob_ok = bob.post("/v1/collections/bob-r/images", files=_files(1, 32100))
            assert bob_ok.status_code == 202 and wait_job(bob, bob_ok.json()["job_id"])["status"] == "succeeded"
            bob_ids = [i["image_id"] for i in bob.get("/v1/collections/bob-r/images").json()["images"]]
            both = bob.post("/v1/collections/bob-r/search/batch", json={"image_ids": bob_ids})
            assert both.status_code == 202
            # Deleting her first batch frees its bytes at once; its results are gone
            assert carol.delete(f"/v1/jobs/{first_id}").status_code == 204
            assert carol.get(f"/v1/jobs/{first_id}").status_code == 404
            assert carol.get(f"/v1/jobs/{first_id}/results").status_code == 404
            assert client.exists(keys.job_results(first_id)) == 0 and client.zscore(spent, first_id) is None
            assert bob.delete(f"/v1/jobs/{both.json()['job_id']}").status_code in (204, 409)  # bob's own: allowed
            assert bob.delete("/v1/jobs/carolbig").status_code == 404  # hers: unknown to bob
            client.delete(keys.job("carolbig"))  # her big one expires: pruned when next counted
            again = carol.post("/v1/collections/carol-r/search/batch", json={"image_ids": ids[:1]})
            assert again.status_code == 202, again.text
            assert client.zscore(spent, "carolbig") is None
            running = carol.delete(f"/v1/jobs/{again.json()['job_id']}")
            assert running.status_code in (204, 409)
            if running.status_code == 409:
                assert running.json()["error"] == "job_running"
        finally:
            client.delete(keys.job("carolbig"))
            client.zrem(spent, "carolbig")
