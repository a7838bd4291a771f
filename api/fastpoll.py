"""The hot path of a busy service is clients polling job status. Plain polls (no `wait`) of
`GET /v1/jobs/{id}` are answered here, in front of the framework (behind `api.gate`, which has
authenticated and rate-limited the request already): same scope check, but a job is read from Redis
and rendered at most once per `ttl_s` per API process, so a thousand polls a second of the same job
cost a few Redis reads instead of a thousand. Status may lag by at most `ttl_s`; long polls
(`?wait=`) take the normal route."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import GATE_PASSED, PRINCIPAL, job_not_found
from api.errors import send_error
from api.metrics import RequestMetrics
from shared.errors import SimsearchError

PREFIX = "/v1/jobs/"
# Job ids are uuid4().hex: anything else cannot exist, so it costs no Redis read.
JOB_ID = re.compile(r"[0-9a-f]{32}")


class JobPollCache:
    def __init__(
        self,
        app: ASGIApp,
        metrics: RequestMetrics,
        ttl_s: float = 0.1,
        final_ttl_s: float = 5.0,
        max_entries: int = 10_000,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.final_ttl_s = final_ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, str, bytes]] = {}

    def _plain_poll(self, scope: Scope) -> str | None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(PREFIX):
            return None
        job_id = scope["path"][len(PREFIX) :]
        if not job_id or "/" in job_id:
            return None
        query = parse_qs(scope.get("query_string", b"").decode())
        if query.get("wait", ["0"])[0] not in ("0", "0.0", ""):
            return None
        return job_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job_id = self._plain_poll(scope)
        state = scope.get("state") or {}
        if job_id is None or GATE_PASSED not in state:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        principal = state[PRINCIPAL]
        try:
            if not JOB_ID.fullmatch(job_id):
                raise job_not_found(job_id)
            entry = await self._job(scope["app"].state.store, job_id)
            if entry is None:
                # Unknown job: let the normal route produce its 404 (and anything else it does).
                await self.app(scope, receive, send)
                return
            collection, body = entry
            if principal is not None and not principal.may_use(collection):
                raise job_not_found(job_id)  # another tenant's: as if unknown
        except SimsearchError as exc:
            await send_error(send, exc.status_code, exc.code, exc.detail, exc.headers)
            status = exc.status_code
        except (RedisConnectionError, RedisTimeoutError):
            status = 503
            detail = "the job store is unreachable; retry shortly"
            await send_error(send, status, "redis_unavailable", detail, {"Retry-After": "2"})
        else:
            status = 200
            await self._send(send, status, body)
        # This path runs in front of the metrics middleware (which would cost more than the poll).
        self.metrics.record("GET", "/v1/jobs/{job_id}", status, time.perf_counter() - started)

    async def _job(self, store, job_id: str) -> tuple[str, bytes] | None:
        now = time.monotonic()
        cached = self._cache.get(job_id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        job = await store.get_job(job_id)
        if job is None:
            return None
        body = job.model_dump_json().encode()
        if len(self._cache) >= self.max_entries:
            self._cache.clear()  # crude, but bounded; entries live for a fraction of a second
        self._cache[job_id] = (now + (self.final_ttl_s if job.status.final else self.ttl_s), job.collection, body)
        return job.collection, body

    @staticmethod
    async def _send(send: Send, status: int, body: bytes) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
