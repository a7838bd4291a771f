"""The hot path of a busy service is clients polling job status. Plain polls (no `wait`) of
`GET /v1/jobs/{id}` are answered here, in front of the framework (behind `api.gate`, which has
authenticated and rate-limited the request already): same scope check, but a job is read from Redis
and rendered at most once per `ttl_s` per API process (api/rendered.py, shared with long polls), so
a thousand polls a second of the same job cost a few Redis reads instead of a thousand. Status may
lag by at most `ttl_s`; long polls (`?wait=`) take the normal route."""

from __future__ import annotations

import time
from urllib.parse import parse_qs

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import GATE_PASSED, PRINCIPAL, job_not_found
from api.errors import send_error
from api.metrics import RequestMetrics
from api.paths import JOB, JOB_ROUTE
from shared.errors import SimsearchError
from shared.schemas import JOB_ID  # uuid4().hex: anything else cannot exist, so it costs no Redis read


class JobPollCache:
    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    def _plain_poll(self, scope: Scope) -> str | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        route = JOB_ROUTE.match(scope["path"])
        if route is None:
            return None
        query = parse_qs(scope.get("query_string", b"").decode())
        if query.get("wait", ["0"])[0] not in ("0", "0.0", ""):
            return None
        return route["job_id"]

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
            view = await scope["app"].state.rendered.get(scope["app"].state.store, job_id)
            if view is None:
                # Unknown job: let the normal route produce its 404 (and anything else it does).
                await self.app(scope, receive, send)
                return
            collection, body = view.collection, view.body
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
        self.metrics.record("GET", JOB, status, time.perf_counter() - started)

    @staticmethod
    async def _send(send: Send, status: int, body: bytes) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
