"""Growing jobs and callbacks on a real Redis, step by step: the interleavings a worker pool
produces (a chunk finishing before or after its source is listed, a redelivered expansion, a
callback claimed twice), without workers."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared import keys
from shared.fetch import Fetcher, FetchPolicy
from shared.jobs import JobLifecycle, Jobs
from shared.jobs.scripts import SCRIPTS
from shared.schemas import ItemOutcome, ItemStatus, JobInput, JobStatus, JobType
from tests.integration.services import start_redis
from worker.upkeep import webhooks
from worker.upkeep.webhooks import WebhookPolicy, claim_due, deliver


@pytest.fixture(scope="module")
def private_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Not the session's Redis: its workers' webhook dispatchers would claim these callbacks
    # (and settle them as failed, having no WEBHOOK_SECRET) between two lines of a test.
    service, url = start_redis(tmp_path_factory.mktemp("growing-jobs"))
    yield url
    service.stop()


@pytest.fixture
def redis_client(private_redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(private_redis_url)


@pytest.fixture
def jobs(redis_client: redis.Redis) -> Jobs:
    return Jobs(redis_client, JobLifecycle(3600), SCRIPTS)


def _ok(i: int):
    return ItemOutcome(index=i, filename=f"{i}", image_id=f"{i:032x}", status=ItemStatus.created), None


def _new(jobs: Jobs, sources: int = 1, inputs: int = 0, params: dict | None = None) -> str:
    job_id = uuid.uuid4().hex
    items = [JobInput(filename=str(i), image_id="", size=0) for i in range(inputs)]
    jobs.create(job_id, JobType.index, "c", params or {}, items, sources=sources)
    return job_id


def test_chunks_done_before_the_source_is_listed(jobs: Jobs) -> None:
    job = _new(jobs, inputs=2)
    assert jobs.reserve_batch(job, 0, 0, 3) == (2, True)  # after the two direct inputs
    # Every item known so far is recorded while the source is still being read: not complete.
    assert jobs.record_items(job, [_ok(i) for i in range(5)]) == 0
    assert jobs.source_done(job, 0) == 1  # the last step completes it, whichever it is


def test_the_source_listed_before_its_chunks_finish(jobs: Jobs) -> None:
    job = _new(jobs)
    assert jobs.reserve_batch(job, 0, 0, 64) == (0, True)
    assert jobs.source_done(job, 0) == 0
    assert jobs.record_items(job, [_ok(i) for i in range(63)]) == 0
    assert jobs.record_items(job, [_ok(63)]) == 1


def test_a_redelivered_expansion_meets_its_reservations(jobs: Jobs) -> None:
    job = _new(jobs, sources=2)
    assert jobs.reserve_batch(job, 0, 0, 64) == (0, True)
    assert jobs.reserve_batch(job, 1, 0, 10) == (64, True)
    assert jobs.reserve_batch(job, 0, 0, 64) == (0, False)  # the same indices, total unchanged
    assert jobs.get(job).progress.total == 74
    assert jobs.source_done(job, 0) == 0
    assert jobs.source_done(job, 0) == 0  # counted once
    assert jobs.source_finished(job, 0) and not jobs.source_finished(job, 1)
    assert jobs.record_items(job, [_ok(i) for i in range(74)]) == 0  # source 1 still open
    assert jobs.source_done(job, 1) == 1


def test_an_empty_source_completes_at_once(jobs: Jobs) -> None:
    job = _new(jobs)
    assert jobs.get(job).progress.total == 0
    assert jobs.source_done(job, 0) == 1


class Receiver:
    def __init__(self, status: int) -> None:
        self.posts = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def gone() -> Iterator[Receiver]:
    r = Receiver(410)
    yield r
    r.server.shutdown()


def _finished_with_callback(jobs: Jobs, url: str) -> str:
    job = _new(jobs, sources=0, inputs=1, params={"callback_url": url})
    jobs.finish(job, JobStatus.succeeded, {})
    return job


def test_a_finished_job_is_due_once_and_a_4xx_ends_delivery(
    jobs: Jobs, redis_client: redis.Redis, gone: Receiver
) -> None:
    redis_client.delete(keys.WEBHOOKS_DUE)
    job = _finished_with_callback(jobs, gone.url)
    assert jobs.get(job).callback.status == "pending"
    assert claim_due(redis_client) == [job]
    assert claim_due(redis_client) == []  # leased: a second dispatcher does not hand it out again
    fetcher = Fetcher(FetchPolicy(allow_private=True))
    assert deliver(redis_client, jobs, fetcher, WebhookPolicy("s"), job) == "failed"
    view = jobs.get(job).callback
    assert (view.attempts, view.last_error, gone.posts) == (1, "HTTP 410", 1)
    assert redis_client.zscore(keys.WEBHOOKS_DUE, job) is None
    assert deliver(redis_client, jobs, fetcher, WebhookPolicy("s"), job) == "failed"  # settled: no POST
    assert gone.posts == 1


@pytest.mark.parametrize("status", [200, 503])
def test_a_job_deleted_while_its_callback_is_posted_stays_deleted(
    jobs: Jobs, redis_client: redis.Redis, status: int
) -> None:
    receiver = Receiver(status)
    job = _finished_with_callback(jobs, receiver.url)
    deleting = receiver.server.RequestHandlerClass.do_POST

    def delete_then_answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        redis_client.delete(*keys.job_keys(job))  # DELETE /v1/jobs/{id} while the POST is in flight
        deleting(handler)

    receiver.server.RequestHandlerClass.do_POST = delete_then_answer  # type: ignore[method-assign]
    try:
        fetcher = Fetcher(FetchPolicy(allow_private=True))
        assert deliver(redis_client, jobs, fetcher, WebhookPolicy("s"), job) == "gone"
        assert receiver.posts == 1
        assert not redis_client.exists(keys.job(job))  # no record of callback fields alone, without a TTL
        assert jobs.get(job) is None and redis_client.zscore(keys.WEBHOOKS_DUE, job) is None
    finally:
        receiver.server.shutdown()


def test_a_delivery_in_progress_is_not_repeated(jobs: Jobs, redis_client: redis.Redis, gone: Receiver) -> None:
    job = _finished_with_callback(jobs, gone.url)
    lock = redis_client.lock(f"{keys.job(job)}:callback-lock", timeout=webhooks.LEASE_S)
    assert lock.acquire(blocking=False)  # another worker is posting right now
    fetcher = Fetcher(FetchPolicy(allow_private=True))
    assert deliver(redis_client, jobs, fetcher, WebhookPolicy("s"), job) == "busy"
    assert gone.posts == 0
    lock.release()


def test_unsignable_or_unusable_callbacks_fail_at_once(jobs: Jobs, redis_client: redis.Redis) -> None:
    fetcher = Fetcher(FetchPolicy())
    job = _finished_with_callback(jobs, "http://xn--/hook")
    assert deliver(redis_client, jobs, fetcher, WebhookPolicy("s"), job) == "failed"
    assert jobs.get(job).callback.last_error.startswith("IDNAError")
    job = _finished_with_callback(jobs, "http://example.com/hook")
    assert deliver(redis_client, jobs, fetcher, WebhookPolicy(""), job) == "failed"
    assert "WEBHOOK_SECRET" in jobs.get(job).callback.last_error
