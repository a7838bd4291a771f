"""A job as clients see it, read from Redis and rendered once, for every poller of it at once.

Plain polls (api/fastpoll.py) and long polls (`?wait=`) both read here. A view is kept `ttl_s`
(`final_ttl_s` once final) per API process, and concurrent misses share one read: 400 long polls
on a running job with 1,000 errors (a 238 KB view) used to re-read and re-parse it 400 times a
second and starve the API (236 of 400 got 503). A waiter woken by the job's "done" message takes the
final view the message carried (`announced`), or asks for a view read after it woke (`fresh_after`),
which the woken waiters again share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from shared.jobs.records import parse_announcement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rendered:
    read_at: float  # time.monotonic() when the read started
    collection: str
    final: bool
    body: bytes  # the JobView as JSON


class RenderedJobs:
    def __init__(self, ttl_s: float = 0.1, final_ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self.ttl_s, self.final_ttl_s, self.max_entries = ttl_s, final_ttl_s, max_entries
        self._cache: dict[str, tuple[float, Rendered]] = {}  # job id -> (expires, view)
        self._reads: dict[str, tuple[float, asyncio.Future[Rendered | None]]] = {}  # job id -> (started, read)
        self.reads = 0  # Redis reads made (tests, metrics)

    async def get(self, store: Any, job_id: str, fresh_after: float | None = None) -> Rendered | None:
        """The job's view (None: unknown), at most `ttl_s` old, or read after `fresh_after`."""
        now = time.monotonic()
        cached = self._cache.get(job_id)
        if cached is not None and cached[0] > now and (fresh_after is None or cached[1].read_at >= fresh_after):
            return cached[1]
        running = self._reads.get(job_id)
        if running is not None and (fresh_after is None or running[0] >= fresh_after):
            return await asyncio.shield(running[1])
        return await self._read(store, job_id)

    def announced(self, job_id: str, message: bytes | str | None, at: float | None) -> Rendered | None:
        """The final view a "done" message carried (received at `at`, monotonic), now cached as a read
        made then; None when it carried only the status (or could not be parsed): read instead."""
        if not message or at is None:
            return None
        cached = self._cache.get(job_id)
        if cached is not None and cached[1].final and cached[1].read_at >= at:
            return cached[1]  # the first woken waiter's parse (or a later read), shared by the rest
        try:
            job = parse_announcement(job_id, message)
        except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            log.warning("job %s: unreadable done message (%s); reading the job instead", job_id, exc)
            return None
        if job is None:
            return None
        view = Rendered(at, job.collection, job.status.final, job.model_dump_json().encode())
        self._remember(job_id, view)
        return view

    def forget(self, job_id: str) -> None:
        """Drop the job's view from this process (it was deleted)."""
        self._cache.pop(job_id, None)

    def _remember(self, job_id: str, view: Rendered) -> None:
        if len(self._cache) >= self.max_entries:
            self._cache.clear()  # crude, but bounded; entries live for a fraction of a second
        self._cache[job_id] = (view.read_at + (self.final_ttl_s if view.final else self.ttl_s), view)

    async def _read(self, store: Any, job_id: str) -> Rendered | None:
        started = time.monotonic()
        future: asyncio.Future[Rendered | None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "not retrieved"
        self._reads[job_id] = (started, future)
        try:
            self.reads += 1
            job = await store.get_job(job_id)
            view = None
            if job is not None:
                view = Rendered(started, job.collection, job.status.final, job.model_dump_json().encode())
                self._remember(job_id, view)
            future.set_result(view)
            return view
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            if self._reads.get(job_id, (0, None))[1] is future:
                del self._reads[job_id]
