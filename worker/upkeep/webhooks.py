"""Completion callbacks: when a job with a `callback_url` ends, POST its view there, signed.

Finishing a job marks its callback pending in the job's record, then puts the job in a Redis
sorted set of due callbacks (another slot of a Redis Cluster: a finisher that dies in between is
completed by its rerun, or by the watchdog, which finds the job finished and still open). A
thread in each worker's main process claims due entries -- a claim pushes the entry `LEASE_S`
into the future, so a delivery whose worker dies is tried again -- and queues a delivery task.
The task POSTs once and either settles the entry (delivered, or failed for good) or reschedules
it with exponential backoff, up to `max_attempts` tries.

Receivers verify `X-Simsearch-Signature: sha256=<hex>` = HMAC-SHA256(WEBHOOK_SECRET,
"<X-Simsearch-Timestamp>.<raw body>") and should refuse stale timestamps.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from shared import keys
from shared.fetch import Fetcher, sign
from shared.jobs import Jobs
from shared.jobs.scripts import CLAIM_DUE, COUNT_CALLBACK_ATTEMPT, RECORD_CALLBACK
from shared.logs import RepeatedFailure
from shared.schemas import CallbackStatus, utcnow
from shared.urlcheck import BlockedAddress, FetchError

log = logging.getLogger(__name__)

LEASE_S = 120  # a claimed delivery not settled by then is claimed again
CLAIM_BATCH = 100
BACKOFF_MAX_S = 300


@dataclass(frozen=True)
class WebhookPolicy:
    secret: str
    max_attempts: int = 6
    backoff_s: float = 2.0  # before the 2nd try; doubles each time, at most BACKOFF_MAX_S


def claim_due(client: redis.Redis, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    due = client.eval(CLAIM_DUE, 1, keys.WEBHOOKS_DUE, now, now + LEASE_S, CLAIM_BATCH)
    return [d.decode() if isinstance(d, bytes) else d for d in due]


def deliver(client: redis.Redis, jobs: Jobs, fetcher: Fetcher, policy: WebhookPolicy, job_id: str) -> str:
    """One delivery attempt; returns the callback's status afterwards. One attempt per job at a
    time: a delivery whose lease ran out while it waited in the queue does not POST twice."""
    lock = client.lock(keys.callback_lock(job_id), timeout=LEASE_S, blocking=False)
    if not lock.acquire():
        return "busy"
    try:
        return _attempt(client, jobs, fetcher, policy, job_id)
    finally:
        # Expired (held past the lease) is fine: the POST is bounded well below it.
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


def _attempt(client: redis.Redis, jobs: Jobs, fetcher: Fetcher, policy: WebhookPolicy, job_id: str) -> str:
    view = jobs.get(job_id)
    if view is None or view.callback is None or view.callback.status != CallbackStatus.pending:
        client.zrem(keys.WEBHOOKS_DUE, job_id)  # expired, or settled by an earlier attempt
        return view.callback.status if view and view.callback else "gone"
    if not policy.secret:
        return _settle(client, job_id, CallbackStatus.failed, "this worker has no WEBHOOK_SECRET to sign with")
    attempt = int(client.eval(COUNT_CALLBACK_ATTEMPT, 1, keys.job(job_id)))
    if attempt < 0:  # deleted since it was read
        client.zrem(keys.WEBHOOKS_DUE, job_id)
        return "gone"
    body = view.model_copy(update={"callback": None}).model_dump_json().encode()
    stamp = str(int(time.time()))
    headers = {
        "X-Simsearch-Signature": f"sha256={sign(policy.secret, stamp, body)}",
        "X-Simsearch-Timestamp": stamp,
        "X-Simsearch-Job": job_id,
        "X-Simsearch-Attempt": str(attempt),
    }
    retry = True
    try:
        status = fetcher.post_json(view.callback.url, body, headers)
        if 200 <= status < 300:
            return _settle(client, job_id, CallbackStatus.delivered, None)
        error = f"HTTP {status}"
        retry = status >= 500 or status in (408, 429)
    except BlockedAddress as exc:
        error, retry = exc.detail, False
    except FetchError as exc:
        error, retry = exc.detail, exc.code != "invalid_url"
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        raise
    except Exception as exc:  # counted as a failed attempt: never an entry retried for days
        log.exception("delivering the callback of job %s failed", job_id)
        error = f"{type(exc).__name__}: {exc}"[:300]
    if not retry or attempt >= policy.max_attempts:
        log.warning("callback for job %s failed for good after %d attempts: %s", job_id, attempt, error)
        return _settle(client, job_id, CallbackStatus.failed, error)
    wait = min(policy.backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S)
    if not _record(client, job_id, time.time() + wait, {"callback_error": error}):
        return "gone"
    return CallbackStatus.pending


def _settle(client: redis.Redis, job_id: str, status: CallbackStatus, error: str | None) -> str:
    fields = {"callback_status": status.value, "callback_at": utcnow()}
    if error:
        fields["callback_error"] = error
    return status if _record(client, job_id, None, fields) else "gone"


def _record(client: redis.Redis, job_id: str, due: float | None, fields: dict[str, str]) -> bool:
    """Write the attempt's outcome if the job still exists (it may have been deleted meanwhile)."""
    written = bool(client.eval(RECORD_CALLBACK, 1, keys.job(job_id), *(x for pair in fields.items() for x in pair)))
    # The due set after the job (another slot): a step lost in between leaves an entry that is
    # claimed again and settled by the record (never a record with nothing to deliver it).
    if written and due is not None:
        client.zadd(keys.WEBHOOKS_DUE, {job_id: due})
    else:
        client.zrem(keys.WEBHOOKS_DUE, job_id)
    return written


class Dispatcher(threading.Thread):
    """Claims due callbacks every `interval_s` and queues a delivery task for each."""

    def __init__(self, client: redis.Redis, send: Callable[[str], None], interval_s: float = 0.5) -> None:
        super().__init__(name="simsearch-webhooks", daemon=True)
        self.client = client
        self.send = send
        self.interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        failures = RepeatedFailure(log, "webhook dispatch")
        while not self._stopped.wait(self.interval_s):
            try:
                for job_id in claim_due(self.client):
                    self.send(job_id)
            except Exception as exc:  # keep dispatching through Redis hiccups
                failures.failed(exc)
            else:
                failures.succeeded()

    def stop(self) -> None:
        self._stopped.set()
