"""Faults injected into real processes: a worker killed mid-batch (default settings), an image
that kills its worker every time, a chunk that raises, a task longer than the visibility timeout,
and a task delivered twice. Faults come from tests/integration/fault_worker.py, never from
production code."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared import keys
from shared.imaging import content_id
from shared.queueing import INDEX_CHUNK_TASK, INDEX_QUEUE
from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes, submit_images, wait_job
from tests.integration.services import Service, start_api, start_redis, start_worker

FAULTS = "tests.integration.fault_worker"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    workdir = tmp_path_factory.mktemp("faults")
    redis_service, url = start_redis(workdir)
    api, base = start_api(url, workdir)
    yield url, workdir, base
    api.stop()
    redis_service.stop()


def test_poison_image_fails_alone_after_bounded_retries(stack: tuple[str, Path, str]) -> None:
    url, workdir, base = stack
    worker = start_worker(url, workdir, "poison", app=FAULTS, FAULT_CRASH_ON_FILENAME="poison.jpg")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            files = [(f"ok{i}.jpg", photo_bytes(18000 + i)) for i in range(40)]
            files.insert(5, ("poison.jpg", photo_bytes(18999)))
            job = wait_job(client, submit_images(client, "poisoned", files)["job_id"], timeout=300)
            assert job["status"] == "partial"
            assert job["progress"] == {"total": 41, "done": 41, "failed": 1}
            (error,) = job["errors"]
            assert error["filename"] == "poison.jpg" and error["error"] == "worker_crashed"
            assert client.get("/v1/collections/poisoned").json()["image_count"] == 40
            assert worker.proc.poll() is None  # the worker itself is still up
            top = search_bytes(client, "poisoned", files[0][1])["result"]["matches"][0]
            assert top["image_id"] == content_id(files[0][1])
    finally:
        worker.stop()


def test_worker_killed_mid_batch_with_default_settings_finishes_within_60s(stack: tuple[str, Path, str]) -> None:
    """kill -9 of the whole worker mid-batch, then a new worker: the chunks the dead worker held
    come back after the visibility timeout (its heartbeat stopped), not after 20 minutes."""
    url, workdir, base = stack
    first = start_worker(url, workdir, "doomed")
    second: Service | None = None
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            files = [(f"b{i:04d}.jpg", photo_bytes(20000 + i, size=(64, 48))) for i in range(300)]
            job_id = submit_images(client, "killed", files)["job_id"]
            deadline = time.monotonic() + 120
            while client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] < 40:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            os.killpg(first.proc.pid, signal.SIGKILL)  # the whole worker: parent and pool
            killed_at = time.monotonic()
            first.proc.wait(10)
            done_at_kill = client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"]
            assert done_at_kill < 300
            second = start_worker(url, workdir, "rescuer")
            job = wait_job(client, job_id, timeout=120)
            finished_after = time.monotonic() - killed_at
            print(f"job finished {finished_after:.1f}s after the kill ({done_at_kill}/300 done at the kill)")
            assert job["status"] == "succeeded", job["errors"][:3]
            assert finished_after < 60
            assert job["progress"] == {"total": 300, "done": 300, "failed": 0}
            ids = job["result"]["created"] + job["result"]["existing"]
            assert sorted(ids) == sorted(content_id(b) for _, b in files)
            assert client.get("/v1/collections/killed").json()["image_count"] == 300
            assert redis.Redis.from_url(url).hlen(keys.vectors("killed", 0)) == 300
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_live_worker_keeps_a_task_longer_than_the_visibility_timeout(stack: tuple[str, Path, str]) -> None:
    """A 32-image chunk taking ~13 s with a 6 s visibility timeout runs once: the heartbeat keeps
    its message (and the prefetched next one) from coming back to the queue."""
    url, workdir, base = stack
    worker = start_worker(url, workdir, "slow", app=FAULTS, FAULT_SLOW_ITEM_S="0.4", TASK_VISIBILITY_TIMEOUT_S="6")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            files = [(f"s{i}.jpg", photo_bytes(21000 + i, size=(64, 48))) for i in range(40)]
            job = wait_job(client, submit_images(client, "slow", files)["job_id"], timeout=120)
            assert job["status"] == "succeeded"
            attempts = redis.Redis.from_url(url).hgetall(keys.job_attempts(job["job_id"]))
            assert attempts == {b"chunk:0": b"1", b"chunk:32": b"1"}
    finally:
        worker.stop()


def test_an_unexpected_error_fails_the_chunk_and_ends_the_job(stack: tuple[str, Path, str]) -> None:
    url, workdir, base = stack
    worker = start_worker(url, workdir, "raiser", app=FAULTS, FAULT_RAISE_ON_FILENAME="bad.jpg")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            first = [(f"r{i}.jpg", photo_bytes(22000 + i, size=(64, 48))) for i in range(31)]
            files = [*first, ("bad.jpg", photo_bytes(22100)), ("after.jpg", photo_bytes(22101))]
            job = wait_job(client, submit_images(client, "raised", files)["job_id"], timeout=120)
            assert job["status"] == "partial"
            assert job["progress"] == {"total": 33, "done": 33, "failed": 32}
            assert {e["error"] for e in job["errors"]} == {"internal_error"}
            assert "injected fault" in job["errors"][0]["detail"]
            assert job["result"]["created"] == [content_id(files[32][1])]
            assert worker.proc.poll() is None
    finally:
        worker.stop()


def test_a_task_delivered_twice_changes_nothing(stack: tuple[str, Path, str]) -> None:
    url, workdir, base = stack
    worker = start_worker(url, workdir, "twice")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            files = [(f"t{i}.jpg", photo_bytes(19000 + i)) for i in range(6)]
            job = index(client, "twice", files)
            r = redis.Redis.from_url(url)
            before = (
                r.hgetall(keys.vectors("twice", 0)),
                r.xlen(keys.log("twice", 0)),
                r.hgetall(keys.job(job["job_id"])),
            )
            from celery import Celery

            producer = Celery(broker=url)
            producer.conf.update(task_serializer="json", accept_content=["json"])
            sent = producer.send_task(
                INDEX_CHUNK_TASK, args=[job["job_id"], "twice", list(range(6))], queue=INDEX_QUEUE
            )
            # Wait for the redelivered task itself to end (the worker logs it), not for a guess.
            deadline = time.monotonic() + 60
            while f"{sent.id}] succeeded" not in worker.log.read_text():
                assert time.monotonic() < deadline, "the second delivery did not finish"
                time.sleep(0.1)
            assert r.hget(keys.job_attempts(job["job_id"]), "chunk:0") == b"2"
            after = (
                r.hgetall(keys.vectors("twice", 0)),
                r.xlen(keys.log("twice", 0)),
                r.hgetall(keys.job(job["job_id"])),
            )
            assert after == before
            assert client.get(f"/v1/jobs/{job['job_id']}").json()["progress"] == job["progress"]
    finally:
        worker.stop()
