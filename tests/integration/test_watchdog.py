"""No job stays `running` forever: the watchdog (worker/upkeep/watchdog.py) sends a quiet job's unfinished
work again, and after a few tries fails what is left. Step by step on a real Redis, then end to end
with a task message deleted from the broker before any worker saw it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared import keys
from shared.queueing import INDEX_CHUNK_TASK, INDEX_QUEUE, SEARCH_QUEUE, SEARCH_TASK
from shared.schemas import JobType
from tests.images import photo_bytes
from tests.integration.client_helpers import submit_images, wait_job
from tests.integration.inprocess import Harness, PixelEmbedder
from tests.integration.services import start_api, start_redis, start_worker
from worker.ingest import indexing
from worker.upkeep.watchdog import WatchdogPolicy, sweep

POLICY = WatchdogPolicy(stall_s=60, max_redrives=2, chunk=2)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of these tests' own: a sweep sees every open job, and the session's Redis holds
    other tests' jobs, some left open on purpose."""
    service, url = start_redis(tmp_path_factory.mktemp("watchdog-redis"))
    yield url
    service.stop()


def _age(client: redis.Redis, job_id: str, seconds: float) -> None:
    client.zadd(keys.OPEN_JOBS, {job_id: time.time() - seconds}, xx=True)


def test_a_quiet_job_gets_its_unrecorded_chunks_again_then_finishes(own_redis: str) -> None:
    h = Harness(own_redis, PixelEmbedder())
    files = [(f"w{i}.jpg", photo_bytes(25000 + i, size=(32, 32))) for i in range(5)]
    job_id = h.submit(f"wd-{uuid.uuid4().hex[:6]}", files)
    assert h.client.zscore(keys.OPEN_JOBS, job_id) is not None  # open from its creation
    indexing.index_chunk(h.context(job_id), [0, 1])  # the chunk [2, 3, 4] was lost
    sent: list[tuple] = []
    send = lambda task, args, queue: sent.append((task, args, queue))  # noqa: E731
    assert sweep(h.client, h.jobs, send, POLICY) == 0  # alive a moment ago: nothing to do
    _age(h.client, job_id, 61)
    assert sweep(h.client, h.jobs, send, POLICY) == 1
    collection = h.jobs.get(job_id).collection
    assert sent == [
        (INDEX_CHUNK_TASK, [job_id, collection, [2, 3]], INDEX_QUEUE),
        (INDEX_CHUNK_TASK, [job_id, collection, [4]], INDEX_QUEUE),
    ]
    assert sweep(h.client, h.jobs, send, POLICY) == 0  # re-driven: quiet again only after stall_s
    for _, args, _ in sent:  # a worker runs the re-sent chunks
        indexing.index_chunk(h.context(job_id), args[2])
    job = h.jobs.get(job_id)
    assert job.status == "succeeded" and job.progress.done == 5
    assert h.client.zscore(keys.OPEN_JOBS, job_id) is None  # finished: no longer watched


def test_a_job_whose_params_no_longer_fit_its_kind_still_ends(own_redis: str) -> None:
    """Params that the kind's model refuses (a record from another release) make the job's tasks
    fail; the watchdog must still end it, and must not stop its pass at that job."""
    h = Harness(own_redis, PixelEmbedder())
    bad = uuid.uuid4().hex
    h.jobs.create(bad, JobType.index, "odd", {"sources": [{"kind": "floppy"}]}, [], sources=1)
    good = h.submit(f"wd-{uuid.uuid4().hex[:6]}", [("g.jpg", photo_bytes(25300, size=(32, 32)))])
    sent: list[tuple] = []
    for _ in range(POLICY.max_redrives + 1):
        _age(h.client, bad, 62)  # the older: swept first
        _age(h.client, good, 61)
        sweep(h.client, h.jobs, lambda *a: sent.append(a), POLICY)
    assert h.jobs.get(bad).status.final  # given up, its source closed
    assert any(args[0] == good for _, args, _ in sent)  # the pass went on to the next job


def test_work_that_never_comes_back_fails_as_lost_and_the_job_ends(own_redis: str) -> None:
    h = Harness(own_redis, PixelEmbedder())
    files = [(f"l{i}.jpg", photo_bytes(25100 + i, size=(32, 32))) for i in range(3)]
    job_id = h.submit(f"lost-{uuid.uuid4().hex[:6]}", files)
    indexing.index_chunk(h.context(job_id), [0])
    sent: list[tuple] = []
    for _ in range(POLICY.max_redrives):
        _age(h.client, job_id, 61)
        sweep(h.client, h.jobs, lambda *a: sent.append(a), POLICY)
    assert len(sent) == POLICY.max_redrives and h.jobs.get(job_id).status == "running"
    _age(h.client, job_id, 61)
    sweep(h.client, h.jobs, lambda *a: sent.append(a), POLICY)
    job = h.jobs.get(job_id)
    assert job.status == "partial" and job.progress.done == 3 and job.progress.failed == 2
    assert {e.error for e in job.errors} == {"work_lost"} and "re-sends" in job.errors[0].detail
    assert job.result["created"] and h.client.zscore(keys.OPEN_JOBS, job_id) is None


def test_a_lost_search_is_sent_again_and_a_vanished_job_is_forgotten(own_redis: str) -> None:
    h = Harness(own_redis, PixelEmbedder())
    job_id = uuid.uuid4().hex
    h.jobs.create(job_id, JobType.search, "coll", {"k": 3, "image_id": "a" * 32}, [])
    _age(h.client, job_id, 61)
    sent: list[tuple] = []
    sweep(h.client, h.jobs, lambda *a: sent.append(a), POLICY)
    assert sent == [(SEARCH_TASK, [job_id, "coll"], SEARCH_QUEUE)]
    h.client.delete(keys.job(job_id))  # expired
    _age(h.client, job_id, 61)
    sweep(h.client, h.jobs, lambda *a: sent.append(a), POLICY)
    assert len(sent) == 1 and h.client.zscore(keys.OPEN_JOBS, job_id) is None


def test_a_task_message_deleted_from_the_broker_is_sent_again(tmp_path_factory: pytest.TempPathFactory) -> None:
    """End to end: the job's only chunk message is deleted before any worker took it (a Redis
    restored from an older file, a wiped queue); a worker started later finishes the job."""
    workdir: Path = tmp_path_factory.mktemp("watchdog")
    redis_service, url = start_redis(workdir)
    api, base = start_api(url, workdir)
    worker = None
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            files = [(f"m{i}.jpg", photo_bytes(25200 + i, size=(64, 48))) for i in range(3)]
            job_id = submit_images(client, "lostmsg", files)["job_id"]
            r = redis.Redis.from_url(url)
            assert r.llen(INDEX_QUEUE) == 1
            r.delete(INDEX_QUEUE)  # the message is gone; the job says `queued`
            worker = start_worker(url, workdir, "watcher", JOB_STALL_S="2", WATCHDOG_INTERVAL_S="0.5")
            started = time.monotonic()
            job = wait_job(client, job_id, timeout=60)
            assert job["status"] == "succeeded" and job["progress"] == {"total": 3, "done": 3, "failed": 0}
            assert time.monotonic() - started < 30
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
        redis_service.stop()
