"""One handler per error family, every body `{"error": code, "detail": text}` (validation errors
add `fields`: each field's {loc, msg, type})."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from shared.errors import SimsearchError, ValidationFailed

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
}


def error_response(status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": code, "detail": detail}, headers=headers)


async def send_error(
    send: Send, status: int, code: str, detail: Any, headers: dict[str, str] | None = None, close: bool = False
) -> None:
    """The same body from a pure ASGI middleware, which answers before the framework runs.
    `close`: the request's body was left unread, so end the connection instead of draining it."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SimsearchError)
    async def _simsearch(_: Request, exc: SimsearchError) -> JSONResponse:
        response = error_response(exc.status_code, exc.code, exc.detail, exc.headers)
        if isinstance(exc, ValidationFailed):  # also each field, for programs
            response = JSONResponse(
                status_code=exc.status_code, content={"error": exc.code, "detail": exc.detail, "fields": exc.fields}
            )
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _simsearch(request, ValidationFailed(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), exc.detail, exc.headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    @app.exception_handler(KombuOperationalError)
    # A Redis Cluster between a primary's death and its replica's promotion (seconds).
    @app.exception_handler(ClusterDownError)
    @app.exception_handler(TryAgainError)
    @app.exception_handler(MasterDownError)
    @app.exception_handler(SlotNotCoveredError)
    @app.exception_handler(RedisClusterException)
    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return error_response(
            503, "redis_unavailable", "the job store is unreachable; retry shortly", {"Retry-After": "2"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")
